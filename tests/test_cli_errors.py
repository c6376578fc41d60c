"""Every command fails with one line, `retrofit <command>: <message>`, and exit code 2 (issue 14);
--debug shows the traceback; Ctrl-C prints one line and exits 130."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INFILL = REPO.parent / "shared" / "data" / "humaneval_infilling"


def run_cli(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``retrofit ARGV`` in a fresh process (what a user sees)."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    if "RETROFIT_DEBUG" not in (env or {}):
        environment.pop("RETROFIT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "retrofit.cli", *argv], capture_output=True,
                          text=True, timeout=300, check=False, cwd=REPO, env=environment)


def main_in_process(capsys, *argv: str) -> subprocess.CompletedProcess:
    """``retrofit ARGV`` through the same entry point, in this process (no torch import cost)."""
    from retrofit.cli import main

    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, captured.out, captured.err)


def assert_one_line(result: subprocess.CompletedProcess, command: str, *needles: str) -> None:
    lines = [line for line in result.stderr.splitlines()
             if line.strip() and "[WARNING]" not in line and "Loading weights" not in line]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith(f"retrofit {command}: "), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_bad_checkpoints_and_files_are_one_line(tmp_path, capsys):
    missing = str(tmp_path / "no-such-checkpoint")
    assert_one_line(run_cli("generate", "--model", missing, "--prompt", "hi"), "generate", missing)

    def check(command: str, *argv: str, needle: str) -> None:
        assert_one_line(main_in_process(capsys, command, *argv), command, needle)

    check("merge", missing, str(tmp_path / "out"), needle=missing)
    check("push", missing, "--repo-id", "me/x", needle=missing)
    check("eval", "gsm8k", "--model", missing, "--output", str(tmp_path / "e"), needle=missing)
    check("eval", "no-such-spec", "--completions", missing, needle="no-such-spec")
    check("train", str(tmp_path / "missing.yaml"), needle="missing.yaml")


def test_a_tokenizer_without_a_mask_token_is_one_line(tmp_path, capsys):
    from retrofit.tokenization import build_char_tokenizer

    tokenizer_dir = tmp_path / "tokenizer"
    build_char_tokenizer("abcdefghijklmnopqrstuvwxyz ?", mask_token=None).save_pretrained(tokenizer_dir)
    result = main_in_process(capsys, "train", str(REPO / "recipes/tiny/flexmdm-gsm8k.yaml"),
                             f"tokenizer.name={tokenizer_dir}", f"output_dir={tmp_path / 'run'}",
                             "training.max_steps=1", f"data.path={REPO.parent / 'shared/data/gsm8k/train.jsonl'}")
    assert_one_line(result, "train", "mask_token_id is not set")


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    from retrofit.cli import main

    missing = str(tmp_path / "none")
    with pytest.raises(FileNotFoundError):
        main(["merge", missing, str(tmp_path / "o"), "--debug"])
    monkeypatch.setenv("RETROFIT_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["merge", missing, str(tmp_path / "o")])


@pytest.mark.skipif(not INFILL.is_dir(), reason=f"no benchmark data at {INFILL}")
def test_ctrl_c_is_one_line(tmp_path):
    from retrofit.evaluation.humaneval import load_infilling_tasks

    completions = tmp_path / "slow.jsonl"
    completions.write_text("".join(
        json.dumps({"task_id": task.task_id, "completion": "import time; time.sleep(2)"}) + "\n"
        for task in load_infilling_tasks("single-line", INFILL)[:200]))
    process = subprocess.Popen(
        [sys.executable, "-m", "retrofit.cli", "eval", "humaneval-infill-single-line", "--completions",
         str(completions), "--data", str(INFILL), "--output", str(tmp_path / "out"), "--no-progress",
         "--limit", "200"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "out" / "run.json").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == (
        f"retrofit eval: interrupted; the finished samples are kept in {tmp_path / 'out'}: rerun the "
        "same command to resume")
    assert "Traceback" not in stderr
