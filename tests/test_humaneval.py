"""HumanEval infilling: canonical solutions pass, known floors, normalisation, pass@k, buckets.

Set RETROFIT_FULL_HUMANEVAL=1 to run every canonical program of all four files (8,652); by default
single-line and random-span-light run in full and fixed random subsets of multi-line (500 of 5,815)
and random-span (300 of 1,640) keep this file within its time budget.
"""

from __future__ import annotations

import math
import os
import random
import time
import urllib.error
from pathlib import Path

import pytest

from retrofit.evaluation.humaneval import (
    InfillingTask,
    build_program,
    load_infilling_tasks,
    normalize_completion,
    score_completions,
    strip_markers,
    summarize_verdicts,
)
from retrofit.evaluation.sandbox import Sandbox, SandboxLimits
from retrofit.evaluation.stats import mean_pass_at_k, pass_at_k

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATA = SHARED / "data" / "humaneval_infilling"
FULL = os.environ.get("RETROFIT_FULL_HUMANEVAL") == "1"
SUBSETS = {"multi-line": 500, "random-span": 300}


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox(SandboxLimits(timeout_s=3.0))


def _task_map(tasks):
    return {task.task_id: task for task in tasks}


def test_file_sizes_and_fields():
    counts = {variant: len(load_infilling_tasks(variant, DATA))
              for variant in ("single-line", "multi-line", "random-span", "random-span-light")}
    assert counts == {"single-line": 1033, "multi-line": 5815, "random-span": 1640,
                      "random-span-light": 164}
    task = load_infilling_tasks("single-line", DATA)[0]
    assert task.task_id == "SingleLineInfilling/HumanEval/0/L0" and task.problem_id == "HumanEval/0"


@pytest.mark.slow
def test_single_line_canonical_all_pass_under_a_minute(sandbox):
    tasks = load_infilling_tasks("single-line", DATA)
    start = time.monotonic()
    verdicts = score_completions(_task_map(tasks), [(t.task_id, t.canonical_solution) for t in tasks],
                                 "single-line", sandbox)
    elapsed = time.monotonic() - start
    summary = summarize_verdicts(verdicts)
    failures = [(v.task_id, v.normalized_result.verdict) for v in verdicts if not v.normalized_result.passed]
    assert failures == []
    assert summary["pass@1"] == 1.0 and summary["raw_pass@1"] == 1.0 and summary["num_tasks"] == 1033
    print(f"single-line canonical: 1,033 programs in {elapsed:.1f}s with {sandbox.workers} workers")
    assert elapsed < 60.0


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["multi-line", "random-span", "random-span-light"])
def test_other_variants_canonical_pass(sandbox, variant):
    tasks = load_infilling_tasks(variant, DATA)
    if not FULL and variant in SUBSETS:
        tasks = random.Random(0).sample(tasks, SUBSETS[variant])
    programs = [build_program(t, t.canonical_solution) for t in tasks]
    results = sandbox.run_many(programs)
    failures = [(t.task_id, r.verdict) for t, r in zip(tasks, results) if not r.passed]
    assert failures == []


@pytest.mark.slow
def test_do_nothing_floors_single_line():
    """Raw empty completions pass exactly 27/1,033, `    pass` 9/1,033 (upstream's harness)."""
    tasks = load_infilling_tasks("single-line", DATA)
    # The failures that matter here are infinite loops, so a short wall clock keeps this quick;
    # every passing program finishes in milliseconds.
    quick = Sandbox(SandboxLimits(timeout_s=1.5))
    programs = [build_program(t, "") for t in tasks] + [build_program(t, "    pass\n") for t in tasks]
    results = quick.run_many(programs)
    assert sum(r.passed for r in results[: len(tasks)]) == 27
    assert sum(r.passed for r in results[len(tasks):]) == 9


def test_program_layout():
    task = InfillingTask("X/HumanEval/0/L0", "def f(x):\n", "    return y\n", "    y = x\n",
                         "def check(candidate):\n    assert candidate(2) == 2\n", "f")
    program = build_program(task, "    y = x\n")
    assert program == ("def f(x):\n    y = x\n    return y\n\ndef check(candidate):\n"
                       "    assert candidate(2) == 2\n\ncheck(f)\n")


def test_normalisation_rules():
    # single-line: one line, one trailing newline, leading blank lines dropped, markers stripped
    assert normalize_completion("    return x", "single-line") == "    return x\n"
    assert normalize_completion("\n\n    return x  \n    more\n", "single-line") == "    return x\n"
    assert normalize_completion("    return x<|eot_id|>garbage", "single-line") == "    return x\n"
    assert normalize_completion("<|fim_middle_start|>    a = 1<|fim_middle_end|>", "single-line") \
        == "    a = 1\n"
    # multi-line: keeps lines, exactly one trailing newline
    assert normalize_completion("    a = 1\n    b = 2", "multi-line") == "    a = 1\n    b = 2\n"
    assert normalize_completion("    a = 1\n\n\n", "multi-line") == "    a = 1\n"
    assert normalize_completion("    a = 1</s>\n    junk", "multi-line") == "    a = 1\n"
    # random-span: holes end mid-line, so only markers go
    assert normalize_completion("x + 1", "random-span") == "x + 1"
    assert normalize_completion("x + 1<|endoftext|>\n", "random-span") == "x + 1"
    assert strip_markers("<prefix>a</prefix><suffix>b</suffix>") == "ab"
    with pytest.raises(ValueError, match="variant"):
        normalize_completion("x", "two-line")


def test_raw_vs_normalised_and_failure_buckets():
    task = InfillingTask("Toy/HumanEval/0/L1", "def f(x):\n", "    return y\n", "    y = x * 2\n",
                         "def check(candidate):\n    assert candidate(2) == 4\n", "f")
    completions = [
        "    y = x * 2",  # raw: glued to the suffix line (SyntaxError); normalised: passes
        "    y = )\n",  # syntax
        "    y = x\n",  # runs, fails the check
        "    y = [][1]\n",  # runs, raises something else
        "    while True: pass\n",  # never returns
    ]
    verdicts = score_completions({task.task_id: task}, [(task.task_id, c) for c in completions],
                                 "single-line", Sandbox(SandboxLimits(timeout_s=1.0)))
    assert [v.completion for v in verdicts] == completions
    assert verdicts[0].raw.verdict == "failed:SyntaxError" and verdicts[0].normalized_result.passed
    assert [v.normalized_result.category for v in verdicts] == [
        "passed", "syntax", "assertion", "other", "timeout"]
    assert verdicts[3].normalized_result.verdict == "failed:IndexError"
    assert verdicts[4].normalized_result.verdict == "timed out"
    summary = summarize_verdicts(verdicts)
    assert summary["failure_buckets"] == {"passed": 1, "syntax": 1, "assertion": 1, "timeout": 1,
                                          "other": 1}
    assert summary["num_tasks"] == 1 and summary["num_samples"] == 5
    assert summary["pass@1"] == pytest.approx(0.2) and summary["raw_pass@1"] == 0.0
    assert "pass@10" not in summary  # only 5 samples per task


def test_pass_at_k_matches_closed_form():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                closed = 1.0 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(closed, abs=1e-12), (n, c, k)
    assert pass_at_k(200, 0, 1) == 0.0 and pass_at_k(200, 200, 100) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert mean_pass_at_k([2, 4], [1, 4], 1) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(3, 1, 4)
    with pytest.raises(ValueError, match="num_correct"):
        pass_at_k(3, 4, 1)


def test_default_download_is_pinned_checked_and_cached(tmp_path, monkeypatch):
    import io

    requested = []
    payload = {"data": (DATA / "HumanEval-RandomSpanInfillingLight.jsonl.gz").read_bytes()}

    def fake_urlopen(url, timeout):
        requested.append(url)
        return io.BytesIO(payload["data"])

    monkeypatch.setattr("urllib.request.urlopen", fake_urlopen)
    tasks = load_infilling_tasks("random-span-light", cache_dir=tmp_path)
    assert len(tasks) == 164
    assert requested == [("https://raw.githubusercontent.com/openai/human-eval-infilling/"
                          "88062ff9859c875d04db115b698ed4b0f0395170/data/"
                          "HumanEval-RandomSpanInfillingLight.jsonl.gz")]
    assert len(load_infilling_tasks("random-span-light", cache_dir=tmp_path)) == 164
    assert len(requested) == 1  # served from the cache the second time
    payload["data"] = b"tampered"
    with pytest.raises(RuntimeError, match="sha256"):
        load_infilling_tasks("single-line", cache_dir=tmp_path)


def test_offline_error_names_the_data_option(tmp_path, monkeypatch):
    def offline(*_args, **_kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(RuntimeError, match="--data"):
        load_infilling_tasks("single-line", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="HumanEval-MultiLineInfilling"):
        load_infilling_tasks("multi-line", tmp_path)
    with pytest.raises(ValueError, match="variant"):
        load_infilling_tasks("all-lines", DATA)
