"""The training loop on CPU: one step per tiny recipe and objective, overfitting, exact kill-and-resume,
dynamic-length batches, gradient checkpointing, bf16, the optimizer groups and the lr schedule."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from hub_server import TEST_USER, local_hub  # noqa: F401 (fixture)
from safetensors.torch import load_file

from retrofit.config import ConfigError, load_config
from retrofit.train import (
    COMPLETE_MARKER,
    build_optimizer,
    cli_main,
    find_latest_checkpoint,
    list_checkpoints,
    lr_factor,
    train,
)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
# The tiny recipes that need no prepared data (the demo-*.yaml ones read `retrofit demo`'s output).
TINY = [
    REPO / "recipes" / "tiny" / f"{name}.yaml"
    for name in ("flexmdm-gsm8k", "mdm-gsm8k", "flexmdm-pretrain", "flexmdm-infill", "mdm-infill")
]
PRETRAIN = REPO / "recipes" / "tiny" / "flexmdm-pretrain.yaml"
GSM8K = SHARED / "data" / "gsm8k" / "train.jsonl"
QUIET = ["logging.progress_bar=false", f"data.path={GSM8K}"]


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Each run builds its own Accelerator (mixed precision differs between tests)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _run(recipe: Path, output_dir: Path, *overrides: str, stop_after_steps: int | None = None):
    cfg = load_config(recipe, [f"output_dir={output_dir}", *QUIET, *overrides])
    return train(cfg, stop_after_steps=stop_after_steps)


def _final_weights(directory: Path) -> dict[str, torch.Tensor]:
    weights = {}
    for name in ("adapter_model.safetensors", "flexmdm_modules.safetensors"):
        if (directory / name).is_file():
            weights.update({f"{name}:{k}": v for k, v in load_file(str(directory / name)).items()})
    assert weights, f"no weights in {directory}"
    return weights


@pytest.mark.parametrize("recipe", TINY, ids=lambda p: p.stem)
def test_one_training_step_per_tiny_recipe(recipe: Path, tmp_path: Path) -> None:
    result = _run(
        recipe,
        tmp_path,
        "training.max_steps=1",
        "training.micro_batch_size=2",
        "checkpoint.save_every=1",
    )
    assert result.steps == 1 and len(result.losses) == 1
    assert math.isfinite(result.losses[0]) and result.losses[0] > 0
    assert result.tokens > 0
    final = tmp_path / "final"
    assert (final / "retrofit_config.json").is_file() and (final / "tokenizer.json").is_file()
    assert (tmp_path / "checkpoint-1" / COMPLETE_MARKER).is_file()
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["steps"] == 1 and summary["tokens"] == result.tokens
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1]
    assert {"loss", "unmask_loss", "insert_loss", "lr", "grad_norm", "tokens_per_s"} <= set(
        records[0]
    )
    recorded = json.loads((final / "retrofit_config.json").read_text())
    cfg = load_config(recipe, QUIET)
    assert recorded["kind"] == cfg.objective.name
    # The data's prompt layout is recorded for generate / eval (EOS closes MDM rows only).
    from retrofit.data import PromptLayout

    layout = PromptLayout.from_dict(recorded["prompt_layout"])
    assert layout.append_eos == (cfg.objective.name == "mdm" if cfg.data.append_eos is None
                                 else cfg.data.append_eos)
    assert layout.chat_template == cfg.data.chat_template
    assert list(layout.infill_markers) == list(cfg.data.infill_markers)
    if recipe.stem == "flexmdm-gsm8k":
        # The final directory is a complete model: `retrofit generate --model output_dir/final` loads it.
        from transformers import AutoTokenizer

        from retrofit.adapter import FlexMDM

        model = FlexMDM.from_pretrained(final)
        tokenizer = AutoTokenizer.from_pretrained(str(final))
        assert model.kind == "flexmdm" and tokenizer.mask_token_id == model.config.mask_token_id


HANDFUL = [
    "abcdefghijklmnopqrstuvwxyz",
    "0123456789012345678901234567890123456789",
    "the cat sat on the mat. the cat sat on the mat.",
    "xyzxyzxyzxyzxyz",
]


def test_loss_decreases_when_overfitting_a_handful_of_sequences(tmp_path: Path) -> None:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from retrofit.adapter import FlexMDM
    from retrofit.tokenization import resolve_special_ids
    from retrofit.train import (
        GlobalBatchStream,
        build_model,
        build_tokenizer,
        flexmdm_micro_batch,
        noise_generator,
        step_denominator,
    )

    text = tmp_path / "handful.txt"
    text.write_text("\n".join(HANDFUL) + "\n")
    cfg = load_config(
        PRETRAIN,
        [
            f"output_dir={tmp_path / 'run'}",
            *QUIET,
            f"data.path={text}",
            "data.fields={}",
            "data.max_length=64",
            "training.max_steps=60",
            "training.micro_batch_size=4",
            "optimizer.lr=3e-3",
            "scheduler.warmup_steps=2",
            "objective.normalizer=tokens",
            "model.adapter_overrides={lora: null, full_finetune: true}",
            "checkpoint.save_every=1000",
        ],
    )
    train(cfg)

    # The per-step loss is noisy (random t, 1/(1-t) weights): compare the step-0 model and the trained
    # one on the same 16 fixed noise draws of the four sequences.
    tokenizer = build_tokenizer(cfg)
    set_seed(cfg.training.seed)
    initial = build_model(cfg, tokenizer, Accelerator())  # same seed: the run's step-0 weights
    trained = FlexMDM.from_pretrained(tmp_path / "run" / "final")
    special_ids = resolve_special_ids(tokenizer)
    batch = next(GlobalBatchStream(cfg, tokenizer, len(HANDFUL), special_ids))

    def fixed_noise_loss(model) -> float:
        model.eval()
        total = 0.0
        with torch.no_grad():
            for draw in range(16):
                out = flexmdm_micro_batch(
                    model,
                    batch,
                    cfg,
                    schedules=(model.insertion_schedule, model.unmasking_schedule),
                    special_ids=special_ids,
                    generator=noise_generator(999, draw, 0),
                    rank=0,
                    world_size=1,
                    device=torch.device("cpu"),
                    denominator=step_denominator([batch], cfg, 1),
                )
                total += float(out.loss) / 16
        return total

    before, after = fixed_noise_loss(initial), fixed_noise_loss(trained)
    assert after < 0.8 * before, f"loss did not drop: {before:.3f} -> {after:.3f}"


def test_kill_and_resume_gives_identical_parameters(tmp_path: Path) -> None:
    # LoRA dropout on, so the restored RNG state matters too.
    common = [
        "training.max_steps=4",
        "training.micro_batch_size=2",
        "data.max_length=48",
        "checkpoint.save_every=2",
        "checkpoint.keep_last=1",
        "logging.log_every=1",
        "model.adapter_overrides.lora.dropout=0.2",
    ]
    straight = _run(PRETRAIN, tmp_path / "straight", *common)
    killed = _run(PRETRAIN, tmp_path / "resumed", *common, stop_after_steps=3)
    # Killed after step 3: the newest complete checkpoint is step 2, no final, and no temp dir left.
    resumed_dir = tmp_path / "resumed"
    assert not (resumed_dir / "final").exists()
    assert find_latest_checkpoint(resumed_dir) == resumed_dir / "checkpoint-2"
    assert not list(resumed_dir.glob(".tmp-*"))
    resumed = _run(PRETRAIN, resumed_dir, *common, "checkpoint.resume=latest")
    assert resumed.resumed_from == resumed_dir / "checkpoint-2"
    assert killed.losses[:2] + resumed.losses == straight.losses  # the loss curve continues exactly
    a, b = _final_weights(tmp_path / "straight" / "final"), _final_weights(resumed_dir / "final")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # One continuous metrics curve (the killed run's step 3 was dropped), last K checkpoints kept.
    steps = [
        json.loads(line)["step"]
        for line in (resumed_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 3, 4]
    assert [p.name for p in list_checkpoints(resumed_dir)] == ["checkpoint-4"]
    summary = json.loads((resumed_dir / "train_summary.json").read_text())
    straight_summary = json.loads((tmp_path / "straight" / "train_summary.json").read_text())
    assert summary["steps"] == 4 and summary["tokens"] == straight_summary["tokens"]


def test_ranks_share_the_step_normaliser_so_their_mean_gradient_is_the_whole_batch(
    tmp_path: Path,
) -> None:
    """With the "tokens" normaliser, two ranks' shares of a global micro-batch average (as DDP does)
    to exactly the loss and gradient of one process on the whole batch; step_denominator sums the
    clean tokens of every micro-batch of the accumulation window."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from retrofit.tokenization import resolve_special_ids
    from retrofit.train import (
        GlobalBatchStream,
        build_model,
        build_tokenizer,
        flexmdm_micro_batch,
        noise_generator,
        step_denominator,
    )

    cfg = load_config(
        PRETRAIN,
        [f"output_dir={tmp_path}", *QUIET, "data.max_length=48", "objective.normalizer=tokens"],
    )
    tokenizer = build_tokenizer(cfg)
    set_seed(0)
    model = build_model(cfg, tokenizer, Accelerator())
    special_ids = resolve_special_ids(tokenizer)
    stream = GlobalBatchStream(cfg, tokenizer, 4, special_ids)
    batch, second = next(stream), next(stream)
    clean_tokens = [int((b.lengths - b.protected.sum(dim=1)).sum()) for b in (batch, second)]
    assert step_denominator([batch, second], cfg, 1) == sum(clean_tokens)
    assert step_denominator([batch, second], cfg, 4) == sum(clean_tokens) / 4
    fixed = load_config(PRETRAIN, [f"output_dir={tmp_path}", "objective.normalizer=fixed"])
    assert step_denominator([batch, second], fixed, 2) == 8 * fixed.objective.fixed_length / 2

    def loss_and_grads(rank: int, world_size: int) -> tuple[float, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        out = flexmdm_micro_batch(
            model, batch, cfg,
            schedules=(model.insertion_schedule, model.unmasking_schedule),
            special_ids=special_ids, generator=noise_generator(0, 0, 0),
            rank=rank, world_size=world_size, device=torch.device("cpu"),
            denominator=step_denominator([batch], cfg, world_size),
        )  # fmt: skip
        out.loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        return float(out.loss.detach()), grads

    whole_loss, whole_grads = loss_and_grads(0, 1)
    (loss_0, grads_0), (loss_1, grads_1) = loss_and_grads(0, 2), loss_and_grads(1, 2)
    assert (loss_0 + loss_1) / 2 == pytest.approx(whole_loss, rel=1e-6)
    assert len(whole_grads) == len(grads_0) == len(grads_1) > 0
    for whole, first, other in zip(whole_grads, grads_0, grads_1, strict=True):
        torch.testing.assert_close((first + other) / 2, whole, rtol=1e-5, atol=1e-7)


def test_dynamic_length_batches_match_padding_to_max_length(tmp_path: Path) -> None:
    common = [
        "training.max_steps=1",
        "training.micro_batch_size=3",
        "data.max_length=64",
        "checkpoint.save_final=false",
        "checkpoint.save_every=1000",
    ]
    dynamic = _run(PRETRAIN, tmp_path / "dynamic", *common)
    padded = _run(PRETRAIN, tmp_path / "padded", *common, "training.pad_to_max_length=true")
    assert dynamic.losses[0] == pytest.approx(padded.losses[0], rel=1e-5)


def test_gradient_checkpointing_gives_the_same_step(tmp_path: Path) -> None:
    common = [
        "training.max_steps=1",
        "training.micro_batch_size=2",
        "data.max_length=48",
        "checkpoint.save_every=1000",
    ]
    plain = _run(PRETRAIN, tmp_path / "plain", *common)
    checkpointed = _run(PRETRAIN, tmp_path / "gc", *common, "training.gradient_checkpointing=true")
    assert plain.losses == pytest.approx(checkpointed.losses, rel=1e-6)
    a, b = _final_weights(tmp_path / "plain" / "final"), _final_weights(tmp_path / "gc" / "final")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_bf16_mixed_precision_keeps_fp32_master_weights(tmp_path: Path) -> None:
    result = _run(
        PRETRAIN,
        tmp_path,
        "training.max_steps=2",
        "training.micro_batch_size=2",
        "data.max_length=48",
        "training.mixed_precision=bf16",
        "model.dtype=bfloat16",
        "checkpoint.save_every=1000",
        "training.gradient_accumulation_steps=2",
    )
    assert all(math.isfinite(loss) for loss in result.losses)
    weights = _final_weights(tmp_path / "final")
    assert all(tensor.dtype == torch.float32 for tensor in weights.values())


def test_optimizer_groups_and_weight_decay(tmp_path: Path) -> None:
    from retrofit.adapter import FlexMDM
    from retrofit.models import LLaDAModelLM, tiny_llada_config

    cfg = load_config(
        PRETRAIN,
        [
            *QUIET,
            "optimizer.weight_decay=0.1",
            "optimizer.lr=1e-3",
            "optimizer.lr_multipliers={new: 10.0, lora: 0.5}",
        ],
    )
    model = FlexMDM.retrofit(LLaDAModelLM(tiny_llada_config()), "tiny-llada")
    optimizer, names = build_optimizer(model, cfg)
    assert set(names) == {"lora", "new", "new/no_decay"}  # LoRA matrices are all 2-D
    by_name = dict(zip(names, optimizer.param_groups))
    assert by_name["lora"]["lr"] == pytest.approx(5e-4)
    assert by_name["new"]["lr"] == pytest.approx(1e-2) and by_name["new"]["weight_decay"] == 0.1
    assert by_name["new/no_decay"]["weight_decay"] == 0.0
    param_names = {id(p): n for n, p in model.named_parameters()}
    for param in by_name["new/no_decay"]["params"]:
        assert param.ndim < 2 or "norm" in param_names[id(param)]
    optimized = sum(len(g["params"]) for g in optimizer.param_groups)
    assert optimized == sum(1 for p in model.parameters() if p.requires_grad)


def test_lr_schedule_is_warmup_then_one_half_cosine() -> None:
    factors = [lr_factor(step, warmup_steps=10, total_steps=110) for step in range(110)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    assert factors[60] == pytest.approx(0.5)
    assert all(
        a >= b for a, b in itertools.pairwise(factors[10:])
    )  # monotone: a single half-cosine
    assert lr_factor(110, warmup_steps=10, total_steps=110) == pytest.approx(0.0)
    assert lr_factor(110, warmup_steps=10, total_steps=110, min_ratio=0.1) == pytest.approx(0.1)


def test_cli_reports_an_invalid_recipe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from retrofit.cli import main

    code = main(["train", str(PRETRAIN), "training.max_step=3"])
    assert code == 2
    assert "did you mean 'max_steps'" in capsys.readouterr().err
    assert cli_main([str(PRETRAIN), "--print-config", *QUIET]) == 0
    assert "max_steps" in capsys.readouterr().out
    with pytest.raises(ConfigError):
        load_config(PRETRAIN, ["objective.name=diffusion"])


def test_push_to_hub_hands_the_final_checkpoint_to_retrofit_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import retrofit.hub

    calls = []
    monkeypatch.setattr(
        retrofit.hub,
        "check_push_access",
        lambda repo_id, **kwargs: calls.append(
            ("preflight", repo_id, kwargs, (tmp_path / "recipe.yaml").exists())
        ),
    )
    monkeypatch.setattr(
        retrofit.hub,
        "push_checkpoint",
        lambda directory, repo_id, **kwargs: calls.append((directory, repo_id, kwargs)),
    )
    _run(
        PRETRAIN,
        tmp_path,
        "training.max_steps=1",
        "training.micro_batch_size=2",
        "data.max_length=32",
        "push_to_hub=true",
        "hub_repo_id=me/tiny-flexmdm",
        "checkpoint.save_every=1000",
    )
    # The token and the repo are checked before anything is written or built, then final/ is pushed.
    assert calls == [
        ("preflight", "me/tiny-flexmdm", {"create": True, "private": False}, False),
        (
            str(tmp_path / "final"),
            "me/tiny-flexmdm",
            {"private": False, "commit_message": "Final retrofit checkpoint (step 1)"},
        ),
    ]
    # The model card reads steps and tokens from the run's summary.
    assert json.loads((tmp_path / "train_summary.json").read_text())["steps"] == 1


# Pushing during a run, against the local Hub server of tests/hub_server.py.
PUSH_RUN = [
    "training.max_steps=2",
    "training.micro_batch_size=2",
    "data.max_length=32",
    "checkpoint.save_every=1",
    "push_to_hub=true",
]
ADAPTER_UPLOAD = {
    ".gitattributes",
    "README.md",
    "retrofit_config.json",
    "adapter_config.json",
    "adapter_model.safetensors",
    "flexmdm_modules.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
}


@pytest.mark.parametrize("mode", ["branch", "commit"])
def test_run_pushes_each_checkpoint_and_the_final_model(
    mode: str,
    tmp_path: Path,
    local_hub,  # noqa: F811
) -> None:
    repo_id = f"{TEST_USER}/tiny-run-{mode}"
    _run(PRETRAIN, tmp_path, *PUSH_RUN, f"hub_repo_id={repo_id}", f"hub_push_checkpoints={mode}")
    repo = local_hub.state.repo(repo_id)
    main_files = local_hub.state.files(repo_id)
    assert set(main_files) >= ADAPTER_UPLOAD
    for name in ADAPTER_UPLOAD - {".gitattributes", "README.md"}:
        assert main_files[name] == (tmp_path / "final" / name).read_bytes(), name
    assert "Trained for 2 optimizer steps" in main_files["README.md"].decode()
    history = [commit.title for commit in repo.history("main")]
    if mode == "branch":
        assert set(repo.branches) == {"main", "step-000001", "step-000002"}
        assert history == ["Final retrofit checkpoint (step 2)", "initial commit"]
        for step in (1, 2):
            files = local_hub.state.files(repo_id, f"step-{step:06d}")
            assert set(files) >= ADAPTER_UPLOAD
            model_dir = tmp_path / f"checkpoint-{step}" / "model"
            if model_dir.is_dir():  # checkpoint.keep_last prunes the older ones locally
                weights = model_dir / "flexmdm_modules.safetensors"
                assert files["flexmdm_modules.safetensors"] == weights.read_bytes()
            # Each branch's card reads that checkpoint's own record (trainer_state.json).
            assert f"Trained for {step} optimizer steps" in files["README.md"].decode()
    else:
        assert set(repo.branches) == {"main"}
        assert history == [
            "Final retrofit checkpoint (step 2)",
            "Retrofit checkpoint at step 2",
            "Retrofit checkpoint at step 1",
            "initial commit",
        ]


def test_a_failed_checkpoint_push_warns_and_training_goes_on(
    tmp_path: Path,
    local_hub,  # noqa: F811
) -> None:
    repo_id = f"{TEST_USER}/tiny-run-flaky"
    local_hub.state.inject_fault("commit", times=1)  # the first checkpoint's commit is dropped
    with pytest.warns(RuntimeWarning, match=r"pushing checkpoint step 1 .*FAILED.*retrofit push"):
        result = _run(
            PRETRAIN, tmp_path, *PUSH_RUN, f"hub_repo_id={repo_id}", "hub_push_checkpoints=branch"
        )
    assert result.steps == 2 and (tmp_path / "final" / "retrofit_config.json").is_file()
    repo = local_hub.state.repo(repo_id)
    assert set(local_hub.state.files(repo_id, "step-000002")) >= ADAPTER_UPLOAD
    # The failed step's branch holds nothing of it (created before the upload, or not at all).
    if "step-000001" in repo.branches:
        assert set(local_hub.state.files(repo_id, "step-000001")) == {".gitattributes"}
    assert repo.history("main")[0].title == "Final retrofit checkpoint (step 2)"


@pytest.mark.parametrize(
    ("token", "checkpoint_pushes"),
    [("read-only", ["hub_push_checkpoints=commit"]), ("missing", []),
     ("other-namespace", ["hub_push_checkpoints=branch"])],
    ids=["read-only", "missing", "other-namespace"],
)  # fmt: skip
def test_a_token_that_cannot_push_fails_before_training(
    token: str, checkpoint_pushes: list[str], tmp_path: Path, local_hub,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    repo_id = f"{TEST_USER}/never-trained"
    if token == "read-only":
        local_hub.state.tokens["hf_test_read_token"] = (TEST_USER, "read")
        monkeypatch.setenv("HF_TOKEN", "hf_test_read_token")
        expected = r"push_to_hub: .*before training failed: .*read-only"
    elif token == "missing":
        monkeypatch.delenv("HF_TOKEN")
        expected = r"push_to_hub: .*before training failed: no Hugging Face token found"
    else:
        repo_id = "someone-else/never-trained"
        expected = r"push_to_hub: .*before training failed: .*HTTP 403"
    import retrofit.train

    built = []
    monkeypatch.setattr(retrofit.train, "build_model", lambda *args: built.append(args))
    with pytest.raises(PermissionError, match=expected):
        _run(PRETRAIN, tmp_path, *PUSH_RUN, f"hub_repo_id={repo_id}", *checkpoint_pushes)
    assert not built and not list(tmp_path.iterdir())  # no model was built, nothing was written
    assert local_hub.state.repo(repo_id) is None


def test_the_research_lr_schedule_and_weight_decay_are_available(tmp_path: Path) -> None:
    """scheduler.cycles = transformers' cosine num_cycles (the research ran 5); per-group weight
    decay and decayed norms / biases (the research AdamW groups)."""
    from transformers import get_cosine_schedule_with_warmup

    from retrofit.adapter import FlexMDM
    from retrofit.models import LLaDAModelLM, tiny_llada_config

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    reference = get_cosine_schedule_with_warmup(optimizer, 10, 110, num_cycles=5)
    expected = []
    for _ in range(110):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()
    factors = [lr_factor(s, warmup_steps=10, total_steps=110, cycles=5) for s in range(110)]
    assert factors[10:] == pytest.approx(expected[10:], abs=1e-12)  # warmup: ours starts at 1/10
    cfg = load_config(
        PRETRAIN,
        [*QUIET, "optimizer.weight_decay=0.1", "optimizer.group_weight_decay={lora: 0.0}",
         "optimizer.decay_norms_and_biases=true"],
    )  # fmt: skip
    model = FlexMDM.retrofit(LLaDAModelLM(tiny_llada_config()), "tiny-llada")
    optimizer, names = build_optimizer(model, cfg)
    by_name = dict(zip(names, optimizer.param_groups, strict=True))
    assert set(names) == {"lora", "new"}  # nothing exempt from decay
    assert by_name["lora"]["weight_decay"] == 0.0 and by_name["new"]["weight_decay"] == 0.1


def test_an_epochs_budget_becomes_steps_at_launch(tmp_path: Path) -> None:
    """training.epochs with a fixed global batch: ceil(epochs x records / global batch) optimizer
    steps, the accumulation derived (1 process x micro-batch 2 x 2 = 4); the saved recipe states
    the resolved steps and loads again."""
    recipe = REPO / "recipes" / "tiny" / "flexmdm-gsm8k.yaml"  # data.max_records: 512
    result = _run(
        recipe, tmp_path, "training.max_steps=null", "training.epochs=0.01",
        "training.global_batch_size=4", "training.micro_batch_size=2", "checkpoint.save_every=1000",
    )  # fmt: skip
    assert result.steps == 2 == math.ceil(0.01 * 512 / 4)
    saved = load_config(tmp_path / "recipe.yaml")
    assert (saved.training.max_steps, saved.training.epochs) == (2, None)
    assert saved.training.gradient_accumulation_steps == 2
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert (summary["epochs"], summary["records_per_epoch"], summary["global_batch_size"]) == (
        0.01, 512, 4
    )  # fmt: skip


@pytest.mark.parametrize("damaged", ["state/optimizer.bin", "trainer_state.json", "state/scheduler.bin"])
def test_a_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path: Path, damaged: str) -> None:
    """Issue 14: `resume: latest` skips a checkpoint whose optimizer / scheduler / trainer state
    does not restore, with a warning, and continues from the previous complete one; the loss curve
    then equals an uninterrupted run's (the earlier checkpoint is an exact restart point)."""
    common = ["training.max_steps=4", "training.micro_batch_size=2", "data.max_length=48",
              "checkpoint.save_every=1", "checkpoint.keep_last=3", "logging.log_every=1"]
    straight = _run(PRETRAIN, tmp_path / "straight", *common)
    run_dir = tmp_path / "run"
    killed = _run(PRETRAIN, run_dir, *common, stop_after_steps=3)
    newest = find_latest_checkpoint(run_dir)
    assert newest == run_dir / "checkpoint-3"
    target = newest / damaged
    assert target.is_file(), sorted(str(p.relative_to(newest)) for p in newest.rglob("*"))
    target.write_bytes(target.read_bytes()[: max(1, target.stat().st_size // 3)])
    with pytest.warns(UserWarning, match=r"checkpoint-3 cannot be restored .*previous complete "
                                         r"checkpoint .*checkpoint-2"):
        resumed = _run(PRETRAIN, run_dir, *common, "checkpoint.resume=latest")
    assert resumed.resumed_from == run_dir / "checkpoint-2"
    assert killed.losses[:2] + resumed.losses == straight.losses
