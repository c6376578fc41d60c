"""The eval runner: per-sample JSONL + summary, resume after a kill, sharding, compare, statistics."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from retrofit.evaluate import cli_main, compare_cli_main
from retrofit.evaluation import EvalTask, Generation, compare_results, load_tasks, run_evaluation
from retrofit.evaluation.lengths import length_report, plot_length_histograms, wasserstein_1
from retrofit.evaluation.specs import builtin_spec_dir, load_spec
from retrofit.evaluation.stats import bootstrap_interval, mcnemar_exact, wilson_interval

SHARED = Path(__file__).resolve().parents[2] / "shared"
GSM8K = SHARED / "data" / "gsm8k" / "test.jsonl"
INFILL = SHARED / "data" / "humaneval_infilling"
REPO = Path(__file__).resolve().parents[1]


def gold_boxed(tasks: list[EvalTask]) -> list[str]:
    """A perfect GSM8K 'model': the boxed gold rationale."""
    from retrofit.evaluation.gsm8k import format_gsm8k_target

    return [format_gsm8k_target(task.reference) for task in tasks]


def read_samples(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / "samples.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- specs
def test_builtin_specs_load():
    names = sorted(path.stem for path in builtin_spec_dir().glob("*.yaml"))
    assert names == ["gsm8k", "gsm8k-paper", "humaneval-infill-multi-line", "humaneval-infill-random-span",
                     "humaneval-infill-single-line", "humaneval-infill-single-line-paper", "lengths"]
    for name in names:
        spec = load_spec(name)
        assert spec.name == name
        assert spec.generation_settings("flexmdm") and spec.generation_settings("mdm")
    single = load_spec("humaneval-infill-single-line")
    assert single.data["variant"] == "single-line" and single.sandbox["timeout_s"] == 3.0
    assert single.generation_settings("flexmdm")["steps"] == 4096
    assert load_spec("gsm8k").generation_settings("flexmdm")["confidence"] == "prob_diff"
    with pytest.raises(FileNotFoundError, match="builtin specs"):
        load_spec("no-such-benchmark")
    with pytest.raises(ValueError, match="task must be one of"):
        load_spec({"name": "x", "task": "translation"})
    with pytest.raises(ValueError, match=r"metrics: unknown key\. did you mean 'metric'"):
        load_spec({"name": "x", "task": "gsm8k", "metrics": {}})


def test_gsm8k_offline_error_names_data_option(monkeypatch):
    import datasets

    def offline(*_args, **_kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match="--data"):
        load_tasks(load_spec("gsm8k"))
    assert cli_main(["gsm8k", "--completions", str(GSM8K), "--output", "/nonexistent/x"]) == 2


# ----------------------------------------------------------------------------- runner with stubs
def test_stub_model_run_writes_samples_and_summary(tmp_path):
    calls = []

    def generate(tasks):
        calls.append([task.task_id for task in tasks])
        texts = gold_boxed(tasks)
        texts[0] = "I think it is \\boxed{-1}"  # one wrong answer per batch
        return [Generation(text, num_tokens=len(text) // 4) for text in texts]

    summary = run_evaluation("gsm8k", tmp_path, generate_fn=generate, data=GSM8K, limit=12,
                             batch_size=4, progress=False, model_identity={"model": "stub"},
                             count_tokens=lambda text: len(text) // 4)
    samples = read_samples(tmp_path)
    assert [s["task_id"] for s in samples] == [f"gsm8k/test/{i}" for i in range(12)]
    assert len(calls) == 3
    for key in ("prompt_id", "generated", "extracted", "verdict", "generated_tokens",
                "reference_tokens", "generation_time_s", "strict_rule", "flexible_correct"):
        assert key in samples[0]
    assert summary["strict_accuracy"] == pytest.approx(9 / 12)
    assert summary["flexible_accuracy"] == pytest.approx(9 / 12)
    low, high = summary["interval_95"]
    assert low < 0.75 < high
    assert summary["lengths"]["unit"] == "tokens" and "wasserstein_1" in summary["lengths"]
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["model"] == {"model": "stub"} and on_disk["metric"] == "strict_accuracy"
    assert (tmp_path / "lengths.png").stat().st_size > 1000


def test_several_samples_per_task_give_pass_at_k(tmp_path):
    with gzip.open(INFILL / "HumanEval-SingleLineInfilling.jsonl.gz", "rt") as handle:
        canonical = {r["task_id"]: r["canonical_solution"] for r in map(json.loads, handle)}
    calls = []

    def generate(tasks):  # right on every other row of each batch
        calls.append([task.task_id for task in tasks])
        return [canonical[t.task_id] if i % 2 == 0 else "    pass\n" for i, t in enumerate(tasks)]

    spec = load_spec("humaneval-infill-single-line")
    spec.metric["k"] = [1, 2]
    summary = run_evaluation(spec, tmp_path, generate_fn=generate, data=INFILL, limit=3,
                             num_samples=2, batch_size=2, progress=False)
    assert calls[0] == ["SingleLineInfilling/HumanEval/0/L0"] * 2  # both samples of a task
    assert summary["num_tasks"] == 3 and summary["num_samples"] == 6
    assert summary["pass@1"] == pytest.approx(0.5) and summary["pass@2"] == pytest.approx(1.0)
    assert summary["interval_method"] == "bootstrap over tasks"
    assert [r["sample_index"] for r in read_samples(tmp_path)] == [0, 1] * 3


def test_pass_at_1_is_reported_even_when_the_spec_lists_other_k(tmp_path):
    """The headline pass@1 is always computed, whatever k the spec lists."""
    spec = load_spec("humaneval-infill-single-line")
    spec.metric["k"] = [2]
    pairs = [(f"SingleLineInfilling/HumanEval/0/L{i}", "    pass\n") for i in range(2)] * 2
    summary = run_evaluation(spec, tmp_path, completions=pairs, data=INFILL, limit=2, progress=False)
    assert summary["metric"] == "pass@1" and summary["pass@1"] == 0.0 and summary["pass@2"] == 0.0


def test_lengths_spec_reports_wasserstein(tmp_path):
    def generate(tasks):  # answers exactly 10 tokens long
        return [Generation("x" * 10, num_tokens=10) for _ in tasks]

    summary = run_evaluation("lengths", tmp_path, generate_fn=generate, data=GSM8K, limit=8,
                             progress=False, count_tokens=len)
    reference = [len(t) for t in gold_boxed(load_tasks(load_spec("lengths"), GSM8K)[:8])]
    assert summary["metric"] == "wasserstein_1"
    assert summary["value"] == pytest.approx(wasserstein_1([10] * 8, reference))
    assert summary["lengths"]["reference"]["count"] == 8
    assert (tmp_path / "lengths.png").exists()


def test_resume_after_kill(tmp_path):
    """A run killed mid-way (even mid-line) resumes without redoing finished samples."""
    script = textwrap.dedent(f"""
        import time
        from retrofit.evaluation import run_evaluation
        from retrofit.evaluation.gsm8k import format_gsm8k_target

        def slow(tasks):
            time.sleep(0.3)
            return [format_gsm8k_target(task.reference) for task in tasks]

        run_evaluation("gsm8k", {str(tmp_path)!r}, generate_fn=slow, data={str(GSM8K)!r},
                       limit=30, batch_size=2, progress=False, model_identity={{"model": "stub"}})
    """)
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    samples = tmp_path / "samples.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if samples.exists() and samples.read_text().count("\n") >= 6:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = samples.read_text().count("\n")
    assert 6 <= finished < 30, "the run should have been killed part-way"
    with samples.open("a") as handle:
        handle.write('{"key": "gsm8k/test/29#0", "task_id": "gsm8k/te')  # a line cut by the kill

    generated = []

    def record(tasks):
        generated.extend(task.task_id for task in tasks)
        return gold_boxed(tasks)

    summary = run_evaluation("gsm8k", tmp_path, generate_fn=record, data=GSM8K, limit=30,
                             batch_size=2, progress=False, model_identity={"model": "stub"})
    assert len(generated) == 30 - finished
    assert len(set(generated)) == len(generated)
    rows = read_samples(tmp_path)
    assert [r["task_id"] for r in rows] == [f"gsm8k/test/{i}" for i in range(30)]
    assert summary["strict_accuracy"] == 1.0 and summary["num_samples"] == 30
    # a third run has nothing left to do
    run_evaluation("gsm8k", tmp_path, generate_fn=record, data=GSM8K, limit=30, progress=False,
                   model_identity={"model": "stub"})
    assert len(generated) == 30 - finished
    # a different model in the same directory is refused
    with pytest.raises(ValueError, match="different run"):
        run_evaluation("gsm8k", tmp_path, generate_fn=record, data=GSM8K, limit=30,
                       progress=False, model_identity={"model": "another"})


def test_sharded_ranks_merge_in_order(tmp_path):
    seen = {0: [], 1: []}

    def generate_for(rank):
        def generate(tasks):
            seen[rank].extend(task.task_id for task in tasks)
            return gold_boxed(tasks)
        return generate

    common = {"data": GSM8K, "limit": 9, "progress": False, "model_identity": {"model": "stub"}}
    assert run_evaluation("gsm8k", tmp_path, generate_fn=generate_for(1), rank=1, world_size=2,
                          **common) is None
    summary = run_evaluation("gsm8k", tmp_path, generate_fn=generate_for(0), rank=0, world_size=2,
                             **common)
    assert seen[0] == [f"gsm8k/test/{i}" for i in (0, 2, 4, 6, 8)]
    assert seen[1] == [f"gsm8k/test/{i}" for i in (1, 3, 5, 7)]
    assert [r["task_id"] for r in read_samples(tmp_path)] == [f"gsm8k/test/{i}" for i in range(9)]
    assert summary["num_samples"] == 9 and summary["settings"]["world_size"] == 2
    assert not list(tmp_path.glob("samples.rank*")) and not list(tmp_path.glob("*.done"))


def test_completions_scoring_and_compare(tmp_path, capsys):
    with gzip.open(INFILL / "HumanEval-SingleLineInfilling.jsonl.gz", "rt") as handle:
        rows = [json.loads(line) for line in handle][:6]
    good, mixed = tmp_path / "good.jsonl", tmp_path / "mixed.jsonl"
    good.write_text("".join(json.dumps({"task_id": r["task_id"], "completion": r["canonical_solution"]})
                            + "\n" for r in rows))
    mixed.write_text("".join(json.dumps({"task_id": r["task_id"], "completion":
                                         r["canonical_solution"] if i % 2 else "    pass\n"}) + "\n"
                             for i, r in enumerate(rows)))
    base = ["humaneval-infill-single-line", "--data", str(INFILL), "--limit", "6", "--no-progress"]
    assert cli_main(base + ["--completions", str(good), "--output", str(tmp_path / "a")]) == 0
    assert cli_main(base + ["--completions", str(mixed), "--output", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    summary_a = json.loads((tmp_path / "a" / "summary.json").read_text())
    summary_b = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary_a["pass@1"] == 1.0 and summary_a["raw_pass@1"] == 1.0
    assert summary_b["pass@1"] == pytest.approx(0.5)
    assert summary_a["settings"]["sandbox"]["python"]
    sample = read_samples(tmp_path / "b")[0]
    assert sample["verdict"].startswith("failed:") and sample["failure_bucket"] in ("syntax", "assertion", "other")

    report = compare_results(tmp_path / "a", tmp_path / "b")
    assert report["num_pairs"] == 6 and report["a_only_correct"] == 3 and report["b_only_correct"] == 0
    assert report["mcnemar_exact_p"] == pytest.approx(0.25)
    assert len(report["diff"]) == 3
    assert compare_cli_main([str(tmp_path / "a"), str(tmp_path / "b"), "--output",
                             str(tmp_path / "diff.json")]) == 0
    assert "McNemar" in capsys.readouterr().out
    assert json.loads((tmp_path / "diff.json").read_text())["num_pairs"] == 6

    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text('{"task_id": "Nope/1", "completion": "x"}\n')
    assert cli_main(["humaneval-infill-single-line", "--data", str(INFILL), "--completions",
                     str(unknown), "--output", str(tmp_path / "c"), "--no-progress"]) == 2
    assert "not in" in capsys.readouterr().err


def test_generate_fn_is_told_the_sample_index(tmp_path):
    """Each sample of a task reaches generate_fn with its own sample_index (its random stream)."""
    calls = []

    def generate(tasks):
        calls.append([(task.task_id, task.sample_index) for task in tasks])
        return gold_boxed(tasks)

    run_evaluation("gsm8k", tmp_path, generate_fn=generate, data=GSM8K, limit=2, num_samples=3,
                   batch_size=2, progress=False, model_identity={"model": "stub"})
    t0, t1 = "gsm8k/test/0", "gsm8k/test/1"
    assert calls == [[(t0, 0), (t0, 1)], [(t0, 2), (t1, 0)], [(t1, 1), (t1, 2)]]
    assert [(r["task_id"], r["sample_index"]) for r in read_samples(tmp_path)] == \
        [pair for call in calls for pair in call]


def test_sample_stream_ids_are_stable_and_distinct():
    from retrofit.evaluation import sample_stream_id

    ids = {sample_stream_id(f"gsm8k/test/{task}", index) for task in range(50) for index in range(20)}
    assert len(ids) == 1000 and all(0 <= i < 2**62 for i in ids)
    assert sample_stream_id("gsm8k/test/3", 1) == sample_stream_id("gsm8k/test/3", 1)


def _run_rank(results: dict, rank: int, directory: Path, generate, **options) -> None:
    """Thread target: one simulated rank of a 2-rank run; its summary (or error) lands in results."""
    try:
        results[rank] = run_evaluation("gsm8k", directory, generate_fn=generate, rank=rank,
                                       world_size=2, data=GSM8K, limit=9, batch_size=2,
                                       progress=False, model_identity={"model": "stub"}, **options)
    except BaseException as error:  # noqa: BLE001 - reported by the test
        results[rank] = error


def test_merge_waits_for_every_sample_despite_a_stale_done_marker(tmp_path):
    """A marker left by a killed earlier run must not make rank 0 merge while rank 1 still writes."""
    import threading

    (tmp_path / "rank1-of-2.done").write_text("done\n")  # stale, from an earlier run
    release = threading.Event()
    calls = []

    def slow_rank_1(tasks):
        calls.append(len(tasks))
        if len(calls) == 2:  # rank 1 is still busy with its second batch
            assert release.wait(60)
        return gold_boxed(tasks)

    results: dict = {}
    rank_1 = threading.Thread(target=_run_rank, args=(results, 1, tmp_path, slow_rank_1))
    rank_1.start()
    shard_1 = tmp_path / "samples.rank1-of-2.jsonl"
    deadline = time.monotonic() + 60
    while not (shard_1.exists() and shard_1.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        time.sleep(0.02)
    rank_0 = threading.Thread(target=_run_rank, args=(results, 0, tmp_path, gold_boxed),
                              kwargs={"merge_timeout_s": 60})
    rank_0.start()
    shard_0 = tmp_path / "samples.rank0-of-2.jsonl"
    while not (shard_0.exists() and shard_0.read_text().count("\n") >= 5) and time.monotonic() < deadline:
        time.sleep(0.02)
    rank_0.join(2.5)  # rank 0 has finished its own samples by now: it must wait, not merge
    assert rank_0.is_alive(), f"rank 0 merged while rank 1 was still writing: {results.get(0)}"
    assert shard_1.exists()
    release.set()
    rank_1.join(60)
    rank_0.join(60)
    assert results[1] is None
    summary = results[0]
    assert not isinstance(summary, BaseException), summary
    assert summary["num_samples"] == 9
    assert [r["task_id"] for r in read_samples(tmp_path)] == [f"gsm8k/test/{i}" for i in range(9)]
    assert not list(tmp_path.glob("samples.rank*")) and not list(tmp_path.glob("*.done"))


def test_merge_times_out_naming_the_missing_rank_and_keeps_the_shards(tmp_path):
    (tmp_path / "rank1-of-2.done").write_text("done\n")  # stale: rank 1 never ran this time
    results: dict = {}
    _run_rank(results, 0, tmp_path, gold_boxed, merge_timeout_s=0.5)
    assert isinstance(results[0], TimeoutError)
    message = str(results[0])
    assert "4 of 9 samples" in message and "rank(s) [1] of 2" in message and "gsm8k/test/1#0" in message
    assert (tmp_path / "samples.rank0-of-2.jsonl").read_text().count("\n") == 5  # nothing lost
    assert not (tmp_path / "samples.jsonl").exists()
    # resuming: rank 1 runs, then rank 0 finds its own samples done and merges everything
    _run_rank(results, 1, tmp_path, gold_boxed)
    _run_rank(results, 0, tmp_path, gold_boxed, merge_timeout_s=5)
    assert results[0]["num_samples"] == 9 and results[0]["strict_accuracy"] == 1.0


def test_compare_refuses_different_benchmarks(tmp_path, capsys):
    """Runs of different specs on the same task ids are not paired; sampler settings may differ."""
    pairs = [(f"gsm8k/test/{i}", "\\boxed{18}") for i in range(3)]

    def run_spec(directory: str, **changes) -> Path:
        spec = load_spec("gsm8k")
        for key, value in changes.items():
            setattr(spec, key, value)
        run_evaluation(spec, tmp_path / directory, completions=pairs, data=GSM8K, limit=3,
                       progress=False)
        return tmp_path / directory

    base = run_spec("base")
    other_sampler = run_spec("sampler", generation={"flexmdm": {"steps": 8}, "mdm": {"steps": 8}})
    assert compare_results(base, other_sampler)["num_pairs"] == 3
    assert compare_results(base / "samples.jsonl", other_sampler)["benchmark"] == "gsm8k"
    other_prompt = run_spec("prompt", prompt={"template": "gsm8k_research"})  # a real template: names are checked now
    with pytest.raises(ValueError, match=r"different benchmark specs \(they differ in \['prompt'\]\)"):
        compare_results(base, other_prompt)
    renamed = run_spec("renamed", name="gsm8k-platinum")
    with pytest.raises(ValueError, match="different benchmark specs"):
        compare_results(renamed, base)
    lengths = tmp_path / "lengths"
    run_evaluation("lengths", lengths, completions=pairs, data=GSM8K, limit=3, progress=False)
    with pytest.raises(ValueError, match="lengths run"):
        compare_results(base, lengths)
    assert compare_cli_main([str(base), str(other_prompt)]) == 2
    assert "different benchmark specs" in capsys.readouterr().err


# ----------------------------------------------------------------------------- tiny real model
@pytest.fixture(scope="module")
def tiny_checkpoints(tiny_checkpoint):
    """A tiny random LLaDA retrofitted as FlexMDM and as the MDM baseline, with a char tokenizer."""
    return {kind: tiny_checkpoint(kind) for kind in ("flexmdm", "mdm")}


@pytest.mark.slow
def test_tiny_model_end_to_end(tiny_checkpoints, tmp_path, capsys):
    for kind, extra in (("flexmdm", ["--gen", "steps=4", "--gen", "max_length=700"]),
                        ("mdm", ["--gen", "steps=4", "--gen", "gen_length=16", "--gen", "block_length=8"])):
        out = tmp_path / f"gsm8k-{kind}"
        argv = ["gsm8k", "--model", str(tiny_checkpoints[kind]), "--data", str(GSM8K), "--limit", "2",
                "--output", str(out), "--batch-size", "2", "--no-progress", "--dtype", "float32", *extra]
        assert cli_main(argv) == 0, capsys.readouterr().err
        samples = read_samples(out)
        assert len(samples) == 2
        assert all(isinstance(s["generated"], str) and s["generated_tokens"] is not None for s in samples)
        assert all(s["reference_tokens"] > 0 for s in samples)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["model"]["kind"] == kind and summary["model"]["retrofit_config_sha256"]
        assert summary["lengths"]["unit"] == "tokens"
        assert summary["settings"]["generation"]["steps"] == 4
        if kind == "flexmdm":  # resume: a rerun finds everything done and keeps the same samples
            assert cli_main(argv) == 0
            assert read_samples(out) == samples
    infill = tmp_path / "infill"
    argv = ["humaneval-infill-single-line", "--model", str(tiny_checkpoints["flexmdm"]), "--data",
            str(INFILL), "--limit", "2", "--output", str(infill), "--no-progress",
            "--gen", "steps=4", "--gen", "max_length=760"]
    assert cli_main(argv) == 0, capsys.readouterr().err
    summary = json.loads((infill / "summary.json").read_text())
    assert summary["num_tasks"] == 2 and 0.0 <= summary["pass@1"] <= 1.0
    assert set(summary["failure_buckets"]) <= {"passed", "syntax", "assertion", "timeout", "other"}


@pytest.mark.slow
def test_tiny_model_run_resumes_after_kill(tiny_checkpoints, tmp_path):
    """`python -m retrofit.evaluate` on a real checkpoint, SIGKILLed after its first samples."""
    out = tmp_path / "killed"
    options = ["gsm8k", "--model", str(tiny_checkpoints["flexmdm"]), "--data", str(GSM8K),
               "--limit", "40", "--batch-size", "3", "--no-progress", "--dtype", "float32",
               "--gen", "steps=2", "--gen", "max_length=700"]
    argv = [sys.executable, "-m", "retrofit.evaluate", *options, "--output", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    samples = out / "samples.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if samples.exists() and samples.read_text().count("\n") >= 2:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = [json.loads(line) for line in samples.read_text().splitlines()]
    assert 2 <= len(before) < 40, "the run should have been killed part-way"
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    after = read_samples(out)
    assert [r["task_id"] for r in after] == [f"gsm8k/test/{i}" for i in range(40)]
    # finished samples were kept as written (timings included), not generated again
    assert after[: len(before)] == before
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_samples"] == 40 and summary["model"]["kind"] == "flexmdm"
    # FlexMDM sampling is random (Poisson insertions) even when greedy: the resumed run still
    # produced exactly what one uninterrupted run with the same seed produces.
    assert cli_main([*options, "--output", str(tmp_path / "uninterrupted")]) == 0
    uninterrupted = read_samples(tmp_path / "uninterrupted")
    assert [r["generated"] for r in uninterrupted] == [r["generated"] for r in after]
    assert any(r["generated"] for r in after)  # the comparison is not between empty answers


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["flexmdm", "mdm"])
def test_samples_do_not_depend_on_batching(tiny_checkpoints, tmp_path, kind):
    """Each sample draws from the stream of its key: batch size and position change nothing, and
    the samples of a task (more than a batch holds) differ at temperature > 0."""
    from retrofit.evaluation import ModelGenerator

    overrides = ({"steps": 8, "max_length": 700, "temperature": 1.0} if kind == "flexmdm" else
                 {"steps": 2, "gen_length": 8, "block_length": 8, "temperature": 1.0})
    generator = ModelGenerator(str(tiny_checkpoints[kind]), load_spec("gsm8k"), device="cpu",
                               dtype="float32", overrides=overrides)
    texts = {}
    for batch_size in (2, 5):
        out = tmp_path / f"batch{batch_size}"
        run_evaluation("gsm8k", out, generate_fn=generator, data=GSM8K, limit=2, num_samples=6,
                       batch_size=batch_size, progress=False)
        texts[batch_size] = {r["key"]: r["generated"] for r in read_samples(out)}
    assert len(texts[2]) == 12 and texts[2] == texts[5]
    for task in ("gsm8k/test/0", "gsm8k/test/1"):
        samples = [texts[2][f"{task}#{index}"] for index in range(6)]
        # Seeded by batch position, the 2 rows of a batch would give at most 2 distinct samples.
        assert len(set(samples)) > 2, samples
        if kind == "mdm":  # 8 tokens at temperature 1: every sample differs
            assert len(set(samples)) == 6, samples


@pytest.mark.slow
def test_sharded_ranks_share_the_run_identity(tiny_checkpoints, tmp_path, monkeypatch):
    """Ranks on different devices resume one run; a local checkpoint is recorded by absolute path."""
    from retrofit.evaluation import ModelGenerator

    checkpoint = Path(tiny_checkpoints["mdm"]).resolve()
    monkeypatch.chdir(checkpoint.parent)
    generator = ModelGenerator(checkpoint.name, load_spec("gsm8k"), device="cpu", dtype="float32",
                               overrides={"steps": 2, "gen_length": 8, "block_length": 8})
    identity = generator.identity()
    assert identity["model"] == str(checkpoint) and "device" not in identity
    out = tmp_path / "sharded"
    options = {"generate_fn": generator, "data": GSM8K, "limit": 3, "world_size": 2, "progress": False}
    generator.device = "cuda:1"  # what rank 1 records under accelerate launch (LOCAL_RANK=1)
    assert run_evaluation("gsm8k", out, rank=1, **options) is None
    generator.device = "cuda:0"
    summary = run_evaluation("gsm8k", out, rank=0, **options)
    assert summary["num_samples"] == 3 and summary["settings"]["device"] == "cuda:0"
    assert json.loads((out / "run.json").read_text())["model"]["model"] == str(checkpoint)
    generator.device = "cuda:1"  # rank 1 of a resumed run compares itself with rank 0's run.json
    assert run_evaluation("gsm8k", out, rank=1, **options) is None


# ----------------------------------------------------------------------------- statistics
def test_wilson_mcnemar_bootstrap():
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 0) == pytest.approx(0.25)
    assert mcnemar_exact(10, 2) == pytest.approx(2 * sum(__import__("math").comb(12, i) for i in range(3)) / 2**12)
    assert mcnemar_exact(5, 5) == 1.0
    values = [1.0] * 30 + [0.0] * 70
    low, high = bootstrap_interval(values)
    assert low < 0.3 < high and bootstrap_interval(values) == (low, high)


def test_wasserstein_and_histogram(tmp_path):
    assert wasserstein_1([1, 2, 3], [1, 2, 3]) == 0.0
    assert wasserstein_1([0, 0], [5, 5]) == pytest.approx(5.0)
    assert wasserstein_1([0, 1, 3], [5, 6, 8]) == pytest.approx(5.0)  # a shift by 5
    assert wasserstein_1([0], [0, 10]) == pytest.approx(5.0)
    # integral of |F_a - F_b|: 1/4*1 + 5/12*1 + 1/6*5 + 1/12*2 + 1/3*3 = 8/3
    # (the quantity scipy.stats.wasserstein_distance computes)
    assert wasserstein_1([0, 2, 7, 9], [1, 1, 12]) == pytest.approx(8 / 3)
    report = length_report([10, 20, 30], [10, 20, 40])
    assert report["wasserstein_1"] == pytest.approx(10 / 3) and report["generated"]["median"] == 20
    path = plot_length_histograms([10, 20, 30], [10, 20, 40], tmp_path / "h.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="non-empty"):
        wasserstein_1([], [1])


def test_module_entry_point_runs_compare(tmp_path):
    """`python -m retrofit.evaluate compare A B` (the accelerate-launchable module) works."""
    for name, correct in (("a", [True, False]), ("b", [True, True])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "samples.jsonl").write_text("".join(
            json.dumps({"key": f"t{i}#0", "task_id": f"t{i}", "correct": c}) + "\n"
            for i, c in enumerate(correct)))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "retrofit.evaluate", "compare", str(tmp_path / "a"),
                           str(tmp_path / "b")], capture_output=True, text=True, env=env, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "only B 1" in done.stdout
    from retrofit.cli import main as retrofit_main  # `retrofit compare A B`

    assert retrofit_main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0


# ----------------------------------------------------------------------------- jsonl benchmarks
def matches_a_reference(task: EvalTask, completion: str) -> bool:
    """The check function of the jsonl benchmark test below (imported by the runner by name)."""
    return (task.prefix or "") + completion + (task.suffix or "") in task.reference.split("|")


def test_jsonl_benchmark_with_a_check_function(tmp_path, monkeypatch):
    """A benchmark of one's own: a YAML spec + a JSONL task file + `module:function`, no code in
    retrofit. Prompt and infilling tasks, accuracy with a Wilson interval, lengths vs references."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    tasks_file = tmp_path / "tasks.jsonl"
    records = [
        {"id": "p/0", "prompt": "say hi", "reference": "hi|hello"},
        {"id": "p/1", "prompt": "say bye", "reference": "bye"},
        {"id": "i/0", "prefix": "a", "suffix": "c", "reference": "abc"},
    ]
    tasks_file.write_text("".join(json.dumps(r) + "\n" for r in records))
    spec_file = tmp_path / "mine.yaml"
    spec_file.write_text(textwrap.dedent("""\
        name: mine
        task: jsonl
        data: {file: tasks.jsonl, fields: {task_id: id}}
        metric: {check: "test_evaluate:matches_a_reference"}
    """))
    tasks = load_tasks(load_spec(spec_file))  # data.file is relative to the spec file
    assert [(t.task_id, t.kind) for t in tasks] == [("p/0", "chat"), ("p/1", "chat"), ("i/0", "infill")]
    answers = {"p/0": "hello", "p/1": "ciao", "i/0": "b"}
    summary = run_evaluation(spec_file, tmp_path / "out", progress=False,
                             generate_fn=lambda batch: [answers[t.task_id] for t in batch])
    assert summary["metric"] == "accuracy" and summary["accuracy"] == pytest.approx(2 / 3)
    assert summary["interval_95"] == pytest.approx(list(wilson_interval(2, 3)))
    assert [s["correct"] for s in read_samples(tmp_path / "out")] == [True, False, True]
    assert summary["lengths"]["unit"] == "characters" and "wasserstein_1" in summary["lengths"]

    def broken(text: str, pattern: str) -> None:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(text)
        spec = {"name": "bad", "task": "jsonl", "data": {"file": str(bad)},
                "metric": {"check": "test_evaluate:matches_a_reference"}}
        with pytest.raises(ValueError, match=pattern):
            load_tasks(load_spec(spec))

    broken('{"prompt": "x"}\n', "needs a string `task_id`")
    broken('{"task_id": "a", "prompt": "x"}\n{"task_id": "a", "prompt": "y"}\n', "appears twice")
    broken('{"task_id": "a", "prefix": "x"}\n', "needs `suffix` too")
    broken('{"task_id": "a"}\n', "needs `prompt`")
    with pytest.raises(ValueError, match="needs metric.check: 'module:function'"):
        load_spec({"name": "x", "task": "jsonl", "data": {"file": "t.jsonl"}})
    with pytest.raises(ValueError, match="cannot be imported"):
        run_evaluation({"name": "x", "task": "jsonl", "data": {"file": str(tasks_file),
                        "fields": {"task_id": "id"}}, "metric": {"check": "nowhere:nothing"}},
                       tmp_path / "x", completions=[("p/0", "hi")], progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tasks(load_spec({"name": "x", "task": "jsonl", "data": {"file": str(tmp_path / "no.jsonl")},
                              "metric": {"check": "a:b"}}))
