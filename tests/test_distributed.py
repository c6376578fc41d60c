"""Multi-process CPU training: 2 processes over gloo compute what 1 process with twice the batch
computes, with either loss normaliser (``tokens``: the two ranks' rows hold different numbers of
tokens, and each divides by the global count); with ``training.global_batch_size`` fixed, 2
processes (accumulation 1) compute what 1 process (accumulation 2, derived) computes; DeepSpeed
ZeRO-2 and ZeRO-3 run the tiny recipe with 2 CPU processes and match the non-DeepSpeed losses; the
`accelerate launch -m retrofit.train` entry point exits cleanly.

`accelerate.debug_launcher` forks the calling process, and a fork of a process whose OpenMP thread
pool is already running (any earlier torch test in the same pytest session) can hang. So the
launcher scenarios run in a fresh interpreter (this file executed as a script, one per session),
which writes each scenario's results for the tests below to check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
RECIPE = REPO / "recipes" / "tiny" / "flexmdm-pretrain.yaml"
GSM8K = SHARED / "data" / "gsm8k" / "train.jsonl"

pytestmark = pytest.mark.slow


# The global batch fixed by the recipe: 2 processes x 2 rows, or 1 process x 2 rows x 2 micro-batches.
GLOBAL_BATCH = ["training.global_batch_size=4"]


def _overrides(
    output_dir: Path, micro_batch_size: int, normalizer: str = "tokens", extra: tuple = ()
) -> list[str]:
    return [
        f"output_dir={output_dir}",
        f"data.path={GSM8K}",
        f"training.micro_batch_size={micro_batch_size}",
        "training.max_steps=2",
        "data.max_length=48",
        "logging.log_every=1",
        "logging.progress_bar=false",
        "checkpoint.save_every=2",
        f"objective.normalizer={normalizer}",
        *extra,
    ]


def _metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def _final_weights(directory: Path) -> dict[str, torch.Tensor]:
    weights = {}
    for name in ("adapter_model.safetensors", "flexmdm_modules.safetensors"):
        weights.update({f"{name}:{k}": v for k, v in load_file(str(directory / name)).items()})
    return weights


def _train_in_launched_process(
    output_dir: Path,
    micro_batch_size: int,
    deepspeed_config: str | None,
    normalizer: str,
    extra: tuple = (),
) -> None:
    """Body of each process started by `accelerate.debug_launcher` (fork; gloo process group)."""
    torch.set_num_threads(1)
    if deepspeed_config is not None:
        # DeepSpeed through accelerate: the launcher's CPU flag would silently drop it.
        os.environ.pop("ACCELERATE_USE_CPU", None)
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"] = deepspeed_config
        os.environ["LOCAL_RANK"] = os.environ["RANK"] = str(torch.distributed.get_rank())
        import deepspeed.ops

        # Skip the ~40 s JIT build of DeepSpeed's shared-memory comm op (gloo is used instead).
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    from accelerate.state import AcceleratorState, GradientState

    # The fork may inherit a single-process accelerate state from earlier tests.
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    from retrofit.config import load_config
    from retrofit.train import train

    result = train(load_config(RECIPE, _overrides(output_dir, micro_batch_size, normalizer, extra)))
    state = AcceleratorState()
    if state.is_main_process:
        (output_dir / "launch.json").write_text(
            json.dumps(
                {
                    "backend": state.backend,
                    "num_processes": state.num_processes,
                    "distributed_type": str(state.distributed_type),
                    "losses": result.losses,
                }
            )
        )


def _single_process_reference(
    output_dir: Path, normalizer: str, micro_batch_size: int = 4, extra: tuple = ()
) -> None:
    """One process, micro-batch 4 (= 2 processes x 2), or the fixed global batch's micro-batches."""
    from accelerate.state import AcceleratorState

    from retrofit.config import load_config
    from retrofit.train import train

    AcceleratorState._reset_state(True)
    overrides = _overrides(output_dir, micro_batch_size, normalizer, extra)
    result = train(load_config(RECIPE, overrides))
    (output_dir / "launch.json").write_text(json.dumps({"losses": result.losses}))


def _run_scenarios(root: Path) -> None:
    """Script body: every launcher scenario first (forks of a clean process), then the reference."""
    import traceback

    from accelerate import debug_launcher
    from torch.multiprocessing import ProcessExitedException, ProcessRaisedException

    torch.set_num_threads(1)
    # name -> (DeepSpeed config or None, loss normaliser, extra overrides)
    scenarios = {
        "ddp": (None, "tokens", ()),
        "ddp-fixed": (None, "fixed", ()),
        "ddp-global": (None, "tokens", tuple(GLOBAL_BATCH)),
    }
    for stage in (2, 3):
        config = str(REPO / "recipes" / "accelerate" / f"ds_zero{stage}.json")
        scenarios[f"zero{stage}"] = (config, "tokens", ())
    for name, (ds_config, normalizer, extra) in scenarios.items():
        output_dir = root / name
        output_dir.mkdir(parents=True)
        try:
            debug_launcher(
                _train_in_launched_process,
                args=(output_dir, 2, ds_config, normalizer, extra),
                num_processes=2,
            )
        except (ProcessRaisedException, ProcessExitedException):  # reported by its test
            (output_dir / "error.txt").write_text(traceback.format_exc())
    for normalizer in ("tokens", "fixed"):
        output_dir = root / f"single-{normalizer}"
        output_dir.mkdir()
        _single_process_reference(output_dir, normalizer)
    output_dir = root / "single-global"  # 1 process, micro-batch 2, accumulation 2 (derived)
    output_dir.mkdir()
    _single_process_reference(output_dir, "tokens", 2, tuple(GLOBAL_BATCH))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("launcher")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), str(root)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return root


def _launch_result(root: Path, name: str) -> dict:
    error = root / name / "error.txt"
    assert not error.exists(), error.read_text()[-4000:]
    return json.loads((root / name / "launch.json").read_text())


@pytest.mark.parametrize(("name", "normalizer"), [("ddp", "tokens"), ("ddp-fixed", "fixed")])
def test_two_gloo_processes_match_one_process_with_twice_the_batch(
    runs: Path, name: str, normalizer: str
) -> None:
    launch = _launch_result(runs, name)
    assert launch["backend"] == "gloo" and launch["num_processes"] == 2
    assert launch["distributed_type"].endswith("MULTI_CPU")
    reference = runs / f"single-{normalizer}"
    single = _launch_result(runs, reference.name)
    # Same global loss and the same gradient (its norm, before clipping) at every step ...
    assert launch["losses"] == pytest.approx(single["losses"], rel=1e-5)
    for two, one in zip(_metrics(runs / name), _metrics(reference), strict=True):
        assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-5)
        assert two["tokens"] == one["tokens"]
    # ... hence the same parameters after two AdamW steps.
    a, b = _final_weights(runs / name / "final"), _final_weights(reference / "final")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
    # Every process saved its RNG state into the (complete) checkpoint.
    state = runs / name / "checkpoint-2" / "state"
    assert (state / "random_states_0.pkl").is_file() and (state / "random_states_1.pkl").is_file()


def test_a_fixed_global_batch_trains_the_same_on_one_and_two_processes(runs: Path) -> None:
    """global_batch_size=4, micro-batch 2: 2 processes (accumulation 1) and 1 process (accumulation
    2, derived at launch) see the same rows, noise and micro-batches, so the same steps."""
    two, one = _launch_result(runs, "ddp-global"), _launch_result(runs, "single-global")
    assert two["num_processes"] == 2
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-5)
    for a, b in zip(_metrics(runs / "ddp-global"), _metrics(runs / "single-global"), strict=True):
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
        assert a["tokens"] == b["tokens"]
    x, y = _final_weights(runs / "ddp-global" / "final"), _final_weights(runs / "single-global" / "final")
    for key in x:
        torch.testing.assert_close(x[key], y[key], rtol=1e-4, atol=1e-6)
    summaries = [json.loads((runs / name / "train_summary.json").read_text())
                 for name in ("ddp-global", "single-global")]  # fmt: skip
    assert [(s["global_batch_size"], s["gradient_accumulation_steps"]) for s in summaries] == [
        (4, 1), (4, 2)
    ]  # fmt: skip


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_on_two_cpu_processes_matches_the_plain_loss(stage: int, runs: Path) -> None:
    launch = _launch_result(runs, f"zero{stage}")
    assert launch["distributed_type"].endswith("DEEPSPEED") and launch["num_processes"] == 2
    single = _launch_result(runs, "single-tokens")
    assert launch["losses"] == pytest.approx(single["losses"], rel=1e-4)
    for deepspeed, plain in zip(
        _metrics(runs / f"zero{stage}"), _metrics(runs / "single-tokens"), strict=True
    ):
        assert deepspeed["grad_norm"] == pytest.approx(plain["grad_norm"], rel=1e-4)
    # The DeepSpeed checkpoint (sharded optimizer states) and the adapter export are complete.
    checkpoint = runs / f"zero{stage}" / "checkpoint-2"
    assert (checkpoint / "COMPLETE").is_file()
    assert list((checkpoint / "state").rglob("*optim_states.pt"))
    final = runs / f"zero{stage}" / "final"
    assert (final / "retrofit_config.json").is_file()
    weights = _final_weights(final)
    assert all(tensor.numel() > 0 for tensor in weights.values())  # ZeRO-3 shards were gathered


def test_accelerate_launch_entry_point_runs_two_processes(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "true",
        "OMP_NUM_THREADS": "1",
        "MASTER_PORT": "29531",
    }
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "retrofit.train", str(RECIPE),
        *_overrides(tmp_path, 2), "training.max_steps=1", "checkpoint.save_every=1",
    ]  # fmt: skip
    completed = subprocess.run(
        command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 1
    assert summary["global_batch_size"] == 4


if __name__ == "__main__":
    _run_scenarios(Path(sys.argv[1]))
