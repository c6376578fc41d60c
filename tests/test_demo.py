"""The CPU demo (`retrofit demo`): the task's pieces, the selection rule, the claim check, and the
whole path at test size over two seeds."""

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
    ALPHABET,
    LENGTH_DISTRIBUTION,
    MAX_MIDDLE,
    DemoSettings,
    bayes_expected_missing,
    build_tokenizer,
    check_claim,
    cli_main,
    decoding_grid,
    infill_ok,
    is_valid,
    length_w1,
    make_infill_tasks,
    sample_strings,
    select_setting,
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
# The task
# ------------------------------------------------------------------------------------------


def test_strings_follow_the_length_law_and_are_sorted() -> None:
    strings = sample_strings(20_000, random.Random(1))
    counts = Counter(len(text) for text in strings)
    assert set(counts) == set(LENGTH_DISTRIBUTION)
    for length, probability in LENGTH_DISTRIBUTION.items():
        assert abs(counts[length] / len(strings) - probability) < 0.015
    assert all(is_valid(text) for text in strings)
    assert set("".join(strings)) == set(ALPHABET)


def test_validity_and_infill_verdicts() -> None:
    assert is_valid("aabccd") and is_valid("d")
    for text in ("", "ba", "abca", "abe", "ab<|eos|>"):
        assert not is_valid(text)
    # A completion must fill something, stay sorted and give a length the data has.
    assert infill_ok("aab", "bbcccc", "cdddddd")  # 16 letters
    assert not infill_ok("aab", "bbccc", "cdddddd")  # 15 letters
    assert not infill_ok("aab", "bbcccd", "cdddddd")  # not sorted
    assert not infill_ok("aabb", "", "")  # nothing filled, even though "aabb" has a data length


def test_infill_tasks_protocol() -> None:
    tasks = make_infill_tasks(sample_strings(500, random.Random(2)), 300, random.Random(3))
    for task in tasks:
        whole = task.prefix + task.middle + task.suffix
        assert len(whole) in (16, 32) and is_valid(whole) and infill_ok(task.prefix, task.middle, task.suffix)
        assert 1 <= len(task.middle) <= MAX_MIDDLE
    assert any(not task.prefix for task in tasks) and any(not task.suffix for task in tasks)


def test_tokenizer_ids_layout_and_round_trip(tmp_path: Path) -> None:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from retrofit.data import encode_prompt

    tokenizer = build_tokenizer()
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert tokenizer.get_vocab() == {"a": 0, "b": 1, "c": 2, "d": 3, "<|mdm_mask|>": 4, "<|eos|>": 5,
                                     "<|bos|>": 6, "<|mid|>": 7, "<|suf|>": 8}
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 5 and tokenizer.mask_token_id == 4
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded("ab<|mid|>c", add_special_tokens=False)["input_ids"] == [0, 1, 7, 2]
    assert encode_prompt(reloaded, "") == [6]  # an empty instruction renders as BOS alone


def test_length_w1_is_exact() -> None:
    assert length_w1([4, 16, 16, 16, 16, 32, 32, 32, 32, 64]) == pytest.approx(0.0)
    assert length_w1([16] * 10, {16: 1.0}) == 0.0
    assert length_w1([17] * 10, {16: 1.0}) == pytest.approx(1.0)
    assert length_w1([10] * 4 + [30] * 4, {10: 0.5, 20: 0.5}) == pytest.approx(5.0)


def test_bayes_expected_missing() -> None:
    mean_length = sum(length * p for length, p in LENGTH_DISTRIBUTION.items())
    assert bayes_expected_missing(0, 0.0) == pytest.approx(mean_length)
    assert bayes_expected_missing(64, 0.999) == pytest.approx(0.0, abs=0.1)
    size_biased = sum(length**2 * p for length, p in LENGTH_DISTRIBUTION.items()) / mean_length
    assert bayes_expected_missing(1, 1e-9) == pytest.approx(size_biased - 1, rel=1e-6)
    weights = {L: p * math.comb(L, 20) * 0.5**L for L, p in LENGTH_DISTRIBUTION.items() if L >= 20}
    direct = sum((L - 20) * w for L, w in weights.items()) / sum(weights.values())
    assert bayes_expected_missing(20, 0.5) == pytest.approx(direct)


# ------------------------------------------------------------------------------------------
# Decoding grids, the selection rule and the claim
# ------------------------------------------------------------------------------------------


def test_grids_cover_what_a_llada_user_tries() -> None:
    settings = DemoSettings.full()
    mdm = decoding_grid("mdm", settings)
    assert len(mdm) == 3 * 2 * 2
    assert {entry["remasking"] for entry in mdm} == {"random", "low_confidence"}
    assert {entry["blocks"] for entry in mdm} == {1, 2}
    assert {entry["temperature"] for entry in mdm} == {entry["temperature"] for entry in
                                                        decoding_grid("flexmdm", settings)}


def _row(valid: float, w1: float, n: int = 100) -> dict:
    from retrofit.evaluation.stats import wilson_interval

    hits = round(valid * n)
    return {"valid": valid, "valid_hits": hits, "valid_interval": list(wilson_interval(hits, n)),
            "length_w1": w1}


def test_selection_rule_prefers_validity_then_length() -> None:
    # Validity first: a less valid setting is out, however good its length ...
    assert select_setting([_row(0.60, 0.5), _row(0.97, 4.0), _row(0.95, 2.0)], "unconditional") == 1
    # ... except within one sample of the most valid one, where the lowest W1 wins.
    assert select_setting([_row(0.60, 0.5), _row(0.97, 4.0), _row(0.96, 2.0)], "unconditional") == 2
    assert select_setting([_row(0.97, 3.0), _row(0.98, 3.0), _row(0.2, 0.1)], "unconditional") == 0
    assert select_setting([{"infill": 0.3}, {"infill": 0.7}, {"infill": 0.7}], "infill") == 1


def test_claim_check() -> None:
    def entry(seed, w1, valid, infill):
        return {"seed": seed, "length_w1": w1, "valid": valid, "infill": infill}

    flex = [entry(0, 1.0, {"value": 97, "low": 95, "high": 98}, {"value": 80, "low": 72, "high": 86})]
    mdm = [entry(0, 3.0, {"value": 98, "low": 96, "high": 99}, {"value": 30, "low": 22, "high": 39})]
    claim = check_claim({"flexmdm": flex, "mdm": mdm})
    assert claim["holds_on_every_seed"] and claim["per_seed"][0]["w1_ratio"] == pytest.approx(1 / 3)
    mdm[0]["length_w1"] = 1.5
    assert not check_claim({"flexmdm": flex, "mdm": mdm})["w1_at_most_half"]


# ------------------------------------------------------------------------------------------
# End to end, test size
# ------------------------------------------------------------------------------------------

TABLE_ROW = re.compile(r"^\| (FlexMDM \(retrofit\)|MDM baseline) \| ([0-9.]+) \(([0-9.]+)-([0-9.]+)\) \| "
                       r"([0-9.]+) \| ([0-9.]+) \[([0-9.]+), ([0-9.]+)\] \| ([0-9.]+) \[")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_quick_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "demo_output"
    assert cli_main(["--quick", "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    for stage in ("writing", "pretraining", "fine-tuning the FlexMDM", "fine-tuning the MDM",
                  "evaluating the FlexMDM", "evaluating the MDM", "checking the insertion head"):
        for seed in (0, 1):
            assert f"[demo] seed {seed}: {stage}" in printed, (seed, stage)  # a line per stage
    # Decoding settings are chosen once, on the first seed's held-out strings.
    assert "[demo] seed 0: choosing the FlexMDM" in printed and "[demo] seed 0: choosing the MDM" in printed
    assert "seed 1: choosing" not in printed

    summary = json.loads((output / "results.json").read_text())
    assert summary["seeds"] == [0, 1]
    markdown = (output / "results.md").read_text()
    rows = {match.group(1): match for match in map(TABLE_ROW.match, markdown.splitlines()) if match}
    assert set(rows) == {"FlexMDM (retrofit)", "MDM baseline"}
    for arm, title in (("flexmdm", "FlexMDM (retrofit)"), ("mdm", "MDM baseline")):
        metrics = summary["arms"][arm]
        assert float(rows[title].group(2)) == pytest.approx(metrics["length_w1"], abs=0.006)
        for key in ("valid", "infill"):
            assert metrics[key]["low"] <= metrics[key]["value"] <= metrics[key]["high"]
        assert [entry["seed"] for entry in metrics["per_seed"]] == [0, 1]
        for entry in metrics["per_seed"]:
            seed = entry["seed"]
            assert set(entry["settings"]) == {"unconditional", "infill"}
            assert entry["settings"] == metrics["settings"][str(seed)]
            run = output / f"seed-{seed}" / "eval" / arm
            samples = [json.loads(line) for line in (run / "unconditional" / "samples.jsonl").read_text().splitlines()]
            assert len(samples) == 24 and all(set(s["generated"]) <= set(ALPHABET) for s in samples)
            assert [s["correct"] for s in samples] == [is_valid(s["generated"]) for s in samples]
            lengths = [s["generated_tokens"] for s in samples]
            assert entry["length_w1"] == pytest.approx(length_w1(lengths))
            low, high = entry["length_w1_interval"]
            assert 0 <= low <= high
            assert entry["valid"]["value"] == pytest.approx(100 * sum(s["correct"] for s in samples) / 24)
            infill = [json.loads(line) for line in (run / "infill" / "samples.jsonl").read_text().splitlines()]
            assert len(infill) == 16
        selection = json.loads((output / "seed-0" / "select" / f"{arm}.json").read_text())
        assert len(selection["tables"]["unconditional"]) == len(selection["plan"]["grid"])
        assert metrics["settings"]["1"] == {b: selection["chosen"][b] for b in ("unconditional", "infill")}
        mean_w1 = sum(entry["length_w1"] for entry in metrics["per_seed"]) / 2
        assert metrics["length_w1"] == pytest.approx(mean_w1)
    assert set(summary["claim"]) >= {"per_seed", "w1_at_most_half", "valid_not_below", "infill_win",
                                     "holds_on_every_seed"}
    assert [row["t"] for row in summary["bayes"][0]["table"]] == [0.1, 0.3, 0.5, 0.7, 0.9]
    _check_png(output / "lengths.png")
    assert "retrofit train recipes/tiny/demo-flexmdm.yaml" in markdown

    # Cached stages are reused: a second run retrains and resamples nothing.
    assert cli_main(["--quick", "--output", str(output)]) == 0
    again = capsys.readouterr().out
    assert "found in the cache" in again and "already trained" in again and "already chosen" in again
    assert json.loads((output / "results.json").read_text())["arms"] == summary["arms"]


def test_parallel_jobs_keep_their_order() -> None:
    from retrofit.demo.cli import _in_parallel

    jobs = [(2.0, 3.0), (3.0, 2.0), (2.0, 0.0)]
    assert _in_parallel(DemoSettings(workers=2), math.pow, jobs) == [8.0, 9.0, 1.0]
    assert _in_parallel(DemoSettings(workers=1), math.pow, jobs) == [8.0, 9.0, 1.0]
