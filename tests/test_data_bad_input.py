"""Bad training data is handled by data.on_bad_record before training starts (issue 14): a line
that is not UTF-8, not JSON (a cut last line too) or not an object is skipped and counted, or
stops the run with file:line; an empty file is one error naming it; never a raw pyarrow error."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from retrofit.data import BadRecordError, DataConfig, ExampleStream
from retrofit.tokenization import build_char_tokenizer

GOOD = b'{"text": "abc"}\n{"text": "def"}\n'
BAD = {
    "garbage": (GOOD + b'{"text": "gh"\n{"text": "ij"}\n', 3, "not valid JSON"),
    "not-an-object": (GOOD + b'[1, 2]\n"x"\n', 3, "a JSON list, not an object"),
    "not-utf8": (GOOD + b'{"text": "\xff\xfe"}\n', 3, "not UTF-8"),
    "truncated": (GOOD + b'{"text": "kl', 3, "a truncated last line"),
}


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer("abcdefghijklmnopqrstuvwxyz ", unk_token="<|unk|>")


def stream(path: Path, tokenizer, policy: str) -> ExampleStream:
    cfg = DataConfig(kind="pretrain", path=str(path), on_bad_record=policy, num_epochs=1,
                     cache_dir=str(path.parent / "cache"))
    return ExampleStream(cfg, tokenizer, eos_token_id=tokenizer.eos_token_id)


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_lines_are_skipped_and_counted(kind, tokenizer, tmp_path):
    content, line, reason = BAD[kind]
    path = tmp_path / f"{kind}.jsonl"
    path.write_bytes(content)
    for policy in ("skip", "truncate"):
        with pytest.warns(UserWarning, match=rf"skipped \d bad line\(s\) of .*line {line}: {reason}"):
            examples = stream(path, tokenizer, policy)
        rows = list(examples)
        assert len(rows) >= 2 and examples.stats.skipped["bad_line"] >= 1
        assert "bad_line" in examples.stats.summary()
    with pytest.raises(BadRecordError, match=rf"^{path}:{line}: {reason}"):
        stream(path, tokenizer, "error")


def test_an_empty_file_is_one_error(tokenizer, tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=rf"no records in {path}"):
        stream(path, tokenizer, "skip")
    blank = tmp_path / "blank.jsonl"
    blank.write_bytes(b"\n\n")
    with pytest.raises(ValueError, match="no records"):
        stream(blank, tokenizer, "skip")


def test_a_clean_file_loads_as_before(tokenizer, tmp_path):
    path = tmp_path / "clean.jsonl"
    path.write_bytes(GOOD)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = list(stream(path, tokenizer, "error"))
    assert len(rows) == 2


def test_training_stops_before_the_first_step_with_file_and_line(tmp_path, capsys):
    from retrofit.cli import main

    data = tmp_path / "train.jsonl"
    data.write_bytes(b'{"question": "1+1?", "answer": "2\\n#### 2"}\n{"question": \n')
    code = main(["train", str(Path(__file__).resolve().parents[1] / "recipes/tiny/flexmdm-gsm8k.yaml"),
                 f"data.path={data}", "data.on_bad_record=error", f"output_dir={tmp_path / 'run'}",
                 "training.max_steps=1"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("retrofit")]
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"retrofit train: {data}:2: ") and "not valid JSON" in err[0]
    assert not (tmp_path / "run" / "checkpoint-1").exists()
