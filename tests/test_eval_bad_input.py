"""Evaluation on bad input: a one-line error naming file:line, coverage warned and recorded, an
over-long prompt skipped and counted (never an abort that repeats), cost in every summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from retrofit.evaluate import cli_main
from retrofit.evaluation import run_evaluation

REPO = Path(__file__).resolve().parents[1]
INFILL = REPO.parent / "shared" / "data" / "humaneval_infilling"
GSM8K = REPO.parent / "shared" / "data" / "gsm8k" / "test.jsonl"
pytestmark = pytest.mark.skipif(not INFILL.is_dir(), reason=f"no benchmark data at {INFILL}")


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "retrofit.cli", *argv], capture_output=True,
                          text=True, timeout=300, check=False, cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})


def test_a_bad_completions_line_names_file_and_line(tmp_path):
    completions = tmp_path / "completions.jsonl"
    completions.write_text('{"task_id": "SingleLineInfilling/HumanEval/0/L0", "completion": "x"}\n\n'
                           '[1, 2]\n')
    result = run_cli("eval", "humaneval-infill-single-line", "--completions", str(completions),
                     "--data", str(INFILL), "--output", str(tmp_path / "out"), "--no-progress")
    assert result.returncode == 2
    assert result.stderr.strip() == (f"retrofit eval: {completions}:3: expected a JSON object, got list")
    completions.write_text('{"task_id": "SingleLineInfilling/HumanEval/0/L0", "completion": ')
    result = run_cli("eval", "humaneval-infill-single-line", "--completions", str(completions),
                     "--data", str(INFILL), "--output", str(tmp_path / "out"), "--no-progress")
    assert result.returncode == 2 and f"{completions}:1: not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_partial_completions_warn_and_record_their_coverage(tmp_path, capsys):
    from retrofit.evaluation.humaneval import load_infilling_tasks

    tasks = load_infilling_tasks("single-line", INFILL)[:3]
    completions = tmp_path / "three.jsonl"
    completions.write_text("".join(json.dumps({"task_id": t.task_id, "completion": t.canonical_solution})
                                   + "\n" for t in tasks))
    out = tmp_path / "partial"
    with pytest.warns(UserWarning, match=r"cover 3 of the 1,033 tasks"):
        summary = run_evaluation("humaneval-infill-single-line", out, completions=completions,
                                 data=INFILL, progress=False)
    assert summary["pass@1"] == 1.0  # over the 3 covered tasks ...
    assert summary["coverage"] == {"tasks": 1033, "tasks_covered": 3, "fraction": 3 / 1033}  # ... said
    assert json.loads((out / "summary.json").read_text())["coverage"]["tasks_covered"] == 3
    assert summary["cost"]["forward_passes_per_sample"] is None  # completions cost no generation
    argv = ["humaneval-infill-single-line", "--completions", str(completions), "--data", str(INFILL),
            "--output", str(tmp_path / "strict"), "--no-progress", "--require-complete"]
    assert cli_main(argv) == 2
    assert "cover 3 of the 1,033 tasks" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_flexmdm(tiny_checkpoint):
    """A tiny random FlexMDM with max_length 200 (GSM8K prompts do not fit)."""
    return tiny_checkpoint("flexmdm", max_length=200)


def test_an_over_long_prompt_is_skipped_and_counted(tiny_flexmdm, tmp_path):
    """GSM8K prompts of 200+ characters do not fit max_length 200: skipped, counted, and the run
    (and a rerun) completes instead of aborting."""
    argv = ["gsm8k", "--model", str(tiny_flexmdm), "--data", str(GSM8K), "--limit", "4",
            "--no-progress", "--gen", "steps=2", "--gen", "max_length=200", "--output", str(tmp_path / "skip")]
    assert cli_main(argv) == 0 and cli_main(argv) == 0  # the rerun resumes, no abort
    summary = json.loads((tmp_path / "skip" / "summary.json").read_text())
    samples = [json.loads(line) for line in (tmp_path / "skip" / "samples.jsonl").read_text().splitlines()]
    assert summary["skipped"] == {"prompt_too_long": len([s for s in samples if s["generated"] == ""])}
    assert summary["skipped"]["prompt_too_long"] >= 1 and summary["strict_accuracy"] == 0.0
    assert all(s["generation"].get("skipped") == "prompt_too_long" for s in samples if s["forward_passes"] == 0)
    assert cli_main([*argv[:-1], str(tmp_path / "error"), "--on-long-prompt", "error"]) == 2
    truncated = tmp_path / "truncate"
    assert cli_main([*argv[:-1], str(truncated), "--on-long-prompt", "truncate-left"]) == 0
    summary = json.loads((truncated / "summary.json").read_text())
    assert "skipped" not in summary and summary["cost"]["forward_passes_per_sample"] > 0
    assert summary["cost"]["seconds_per_sample"] > 0 and summary["cost"]["samples_generated"] == 4


def test_sampler_settings_are_validated_once(tiny_checkpoint, tmp_path):
    """Issue 13: a spec's generation sections go through the samplers' typed configs: a typo is an
    error naming the spec and key at load time, not a crash mid-run; --gen overrides too."""
    from retrofit.evaluation.specs import load_spec

    spec = {"name": "x", "task": "gsm8k", "generation": {"flexmdm": {"stpes": 8}}}
    with pytest.raises(ValueError, match=r"generation\.flexmdm.*stpes.*did you mean 'steps'"):
        load_spec(spec)
    with pytest.raises(ValueError, match=r"generation\.mdm\.sampler must be 'llada' or 'dream'"):
        load_spec({"name": "x", "task": "gsm8k", "generation": {"mdm": {"sampler": "other"}}})
    with pytest.raises(ValueError, match=r"not settings of Dream's sampler"):
        load_spec({"name": "x", "task": "gsm8k", "generation": {"mdm": {"sampler": "dream", "block_length": 8}}})
    argv = ["gsm8k", "--model", str(tiny_checkpoint("flexmdm")), "--data", str(GSM8K), "--limit", "1",
            "--output", str(tmp_path / "typo"), "--no-progress", "--gen", "stpes=2"]
    assert cli_main(argv) == 2


def test_an_mdm_checkpoint_can_decode_with_dreams_sampler(tiny_checkpoint):
    from retrofit.pipeline import Pipeline, Task

    pipeline = Pipeline.from_pretrained(tiny_checkpoint("mdm"), device="cpu")
    settings = {"sampler": "dream", "gen_length": 8, "steps": 4, "alg": "entropy"}
    (answer,) = pipeline.generate([Task(prompt="hi")], settings)
    assert answer.forward_passes == 4 and len(answer.token_ids) <= 8
