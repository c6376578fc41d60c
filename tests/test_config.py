"""Recipe loading: every shipped recipe validates; bad recipes fail with errors naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from retrofit.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    from_dict,
    load_config,
    parse_overrides,
    to_dict,
)
from retrofit.data import DataConfig
from retrofit.training.run_size import load_resolved

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
RECIPES = sorted((REPO / "recipes").glob("*/*.yaml"))
TRAIN_RECIPES = [p for p in RECIPES if p.parent.name != "accelerate"]
GSM8K = SHARED / "data" / "gsm8k" / "train.jsonl"


def _write(tmp_path: Path, raw: dict, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def _minimal(**sections) -> dict:
    raw = {
        "output_dir": "out",
        "model": {"base": "tiny-random", "adapter": "tiny-llada"},
        "tokenizer": {"name": "char"},
        "data": {"kind": "gsm8k", "path": str(GSM8K)},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return raw


@pytest.mark.parametrize("recipe", TRAIN_RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_recipe_validates(recipe: Path) -> None:
    # Hub ids are not fetched; stage-2 recipes start from stage-1 outputs that do not exist here.
    # (tiny/demo-*.yaml read the data `retrofit demo` writes first.)
    check_files = recipe.parent.name == "tiny" and not recipe.name.startswith("demo-")
    cfg = load_config(recipe, ["model.init_from=null"], check_files=check_files)
    assert isinstance(cfg, TrainConfig)
    assert isinstance(cfg.data, DataConfig)
    assert cfg.objective.name in ("flexmdm", "mdm")
    assert cfg.output_dir


def test_llada_recipes_follow_the_paper_setting() -> None:
    # The paper ran on 16 GPUs; the recipe states the global batch (128), the accumulation follows.
    transfer = load_resolved(
        REPO / "recipes/llada-8b/transfer.yaml", check_files=False, world_size=16
    )
    assert transfer.data.kind == "pretrain" and transfer.data.max_length == 1024
    assert transfer.training.micro_batch_size == 4
    assert transfer.training.gradient_accumulation_steps == 2
    assert transfer.optimizer.lr == pytest.approx(1e-4)
    assert transfer.scheduler.warmup_ratio == pytest.approx(0.05)
    assert transfer.training.mixed_precision == "bf16"
    assert transfer.optimizer.max_grad_norm == pytest.approx(1.0)
    for name in ("gsm8k", "code-infill"):
        flex = load_config(
            REPO / f"recipes/llada-8b/{name}.yaml", ["model.init_from=null"], check_files=False
        )
        mdm = load_config(REPO / f"recipes/llada-8b/mdm-{name}.yaml", check_files=False)
        assert (flex.objective.name, mdm.objective.name) == ("flexmdm", "mdm")
        # Same budget and LoRA for both arms of the comparison.
        assert flex.training.max_steps == mdm.training.max_steps
        assert flex.training.micro_batch_size == mdm.training.micro_batch_size
        assert flex.optimizer.lr == mdm.optimizer.lr
        assert flex.model.adapter == mdm.model.adapter


def test_overrides_are_yaml_scalars() -> None:
    parsed = parse_overrides(
        [
            "training.max_steps=10",
            "optimizer.lr=3e-5",
            "logging.report_to=[tensorboard]",
            "model.revision=null",
            "push_to_hub=true",
            "hub_repo_id=me/model",
        ]
    )
    assert parsed[0] == (["training", "max_steps"], 10)
    assert parsed[1] == (["optimizer", "lr"], "3e-5")  # YAML 1.1; the float field accepts it
    assert parsed[2] == (["logging", "report_to"], ["tensorboard"])
    assert parsed[3] == (["model", "revision"], None)
    raw = apply_overrides(_minimal(), parsed)
    cfg = from_dict(TrainConfig, {k: v for k, v in raw.items() if k != "data"})
    assert cfg.training.max_steps == 10
    assert cfg.optimizer.lr == pytest.approx(3e-5)
    assert cfg.logging.report_to == ["tensorboard"]
    assert cfg.push_to_hub is True and cfg.hub_repo_id == "me/model"


def test_overrides_apply_to_a_recipe_file(tmp_path: Path) -> None:
    path = _write(tmp_path, _minimal())
    cfg = load_config(
        path, ["training.micro_batch_size=2", "data.max_length=64", "checkpoint.resume=latest"]
    )
    assert cfg.training.micro_batch_size == 2
    assert cfg.data.max_length == 64
    assert cfg.checkpoint.resume == "latest"
    # The resolved recipe round-trips through YAML.
    again = load_config(_write(tmp_path, to_dict(cfg), "again.yaml"))
    assert to_dict(again) == to_dict(cfg)


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    path = _write(tmp_path, _minimal(training={"max_step": 10}))
    with pytest.raises(
        ConfigError, match=r"training\.max_step: unknown key.*did you mean 'max_steps'"
    ):
        load_config(path)
    with pytest.raises(ConfigError, match=r"optimiser: unknown key.*did you mean 'optimizer'"):
        load_config(_write(tmp_path, _minimal(optimiser={"lr": 1.0})))
    with pytest.raises(
        ConfigError, match=r"data\.max_lenght: unknown key.*did you mean 'max_length'"
    ):
        load_config(
            _write(tmp_path, _minimal(data={"kind": "gsm8k", "path": str(GSM8K), "max_lenght": 5}))
        )
    with pytest.raises(
        ConfigError, match=r"training\.max_stpes: unknown key.*did you mean 'max_steps'"
    ):
        load_config(_write(tmp_path, _minimal()), ["training.max_stpes=3"])


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("training.max_steps=ten", r"training\.max_steps: expected an integer, got 'ten'"),
        ("training.max_steps=2.5", r"training\.max_steps: expected an integer"),
        ("optimizer.lr=fast", r"optimizer\.lr: expected a number, got 'fast'"),
        (
            "training.gradient_checkpointing=3",
            r"training\.gradient_checkpointing: expected true/false",
        ),
        (
            "training.mixed_precision=fp8",
            r"training\.mixed_precision: 'fp8' is not one of 'no', 'bf16'",
        ),
        (
            "objective.name=flexmd",
            r"objective\.name: 'flexmd' is not one of .*Did you mean 'flexmdm'",
        ),
        ("model.base=123", r"model\.base: expected a string, got 123"),
        ("logging.report_to=tensorboard", r"logging\.report_to: expected a list"),
        ("training=5", r"training: expected a mapping"),
        ("training.max_steps=0", r"training\.max_steps: must be >= 1"),
        (
            "optimizer.lr_multipliers.lora_a=2",
            r"optimizer\.lr_multipliers\.lora_a: unknown parameter group.*'lora'",
        ),
        ("push_to_hub=true", r"hub_repo_id is not set"),
        ("data.kind=books", r"data: .*kind"),
    ],
)
def test_wrong_values_name_the_key(tmp_path: Path, override: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_config(_write(tmp_path, _minimal()), [override])


def test_hub_push_options(tmp_path: Path) -> None:
    recipe = _write(tmp_path, _minimal())
    assert load_config(recipe).hub_push_checkpoints is None
    push = ["push_to_hub=true", "hub_repo_id=me/model"]
    for mode in ("branch", "commit"):
        cfg = load_config(recipe, [*push, f"hub_push_checkpoints={mode}"])
        assert cfg.push_to_hub and cfg.hub_repo_id == "me/model"
        assert cfg.hub_push_checkpoints == mode
    assert load_config(recipe, [*push, "hub_push_checkpoints=null"]).hub_push_checkpoints is None
    needs_push = r"hub_push_checkpoints: 'branch' .*needs push_to_hub: true and hub_repo_id"
    with pytest.raises(ConfigError, match=needs_push):
        load_config(recipe, ["hub_push_checkpoints=branch"])
    with pytest.raises(ConfigError, match=needs_push):
        load_config(recipe, ["hub_push_checkpoints=branch", "hub_repo_id=me/model"])
    bad_mode = r"hub_push_checkpoints: expected 'branch' \| 'commit' \| null, got 'tag'"
    with pytest.raises(ConfigError, match=bad_mode):
        load_config(recipe, [*push, "hub_push_checkpoints=tag"])
    with pytest.raises(ConfigError, match=r"hub_repo_id: 'me/bad name' is not a valid Hub repo id"):
        load_config(recipe, ["push_to_hub=true", "hub_repo_id=me/bad name"])
    with pytest.raises(ConfigError, match=r"hub_repo_id: 'a/b/c' is not a valid Hub repo id"):
        load_config(recipe, ["hub_repo_id=a/b/c"])


def test_missing_files_are_reported_before_training(tmp_path: Path) -> None:
    recipe = _write(tmp_path, _minimal())
    with pytest.raises(ConfigError, match=r"recipe .*nope\.yaml.* does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(
        ConfigError, match=r"data\.path: local file .*missing\.jsonl.* does not exist"
    ):
        load_config(recipe, ["data.path=./missing.jsonl"])
    with pytest.raises(ConfigError, match=r"model\.base: local path .* does not exist"):
        load_config(recipe, ["model.base=./no-such-model"])
    with pytest.raises(ConfigError, match=r"model\.adapter: spec file .* does not exist"):
        load_config(recipe, ["model.adapter=adapters/nope.yaml"])
    with pytest.raises(ConfigError, match=r"checkpoint\.resume: .* is not a checkpoint directory"):
        load_config(recipe, [f"checkpoint.resume={tmp_path / 'checkpoint-7'}"])
    with pytest.raises(
        ConfigError, match=r"model\.init_from: checkpoint directory .* does not exist"
    ):
        load_config(recipe, ["model.init_from=./outputs/stage1/final"])


def test_extends_merges_sections(tmp_path: Path) -> None:
    _write(tmp_path, _minimal(optimizer={"lr": 0.5, "weight_decay": 0.1}), "base.yaml")
    child = _write(
        tmp_path,
        {"extends": "base.yaml", "optimizer": {"lr": 0.25}, "objective": {"name": "mdm"}},
        "child.yaml",
    )
    cfg = load_config(child)
    assert cfg.optimizer.lr == 0.25 and cfg.optimizer.weight_decay == pytest.approx(0.1)
    assert cfg.objective.name == "mdm" and cfg.data.kind == "gsm8k"
    _write(tmp_path, {"extends": "loop_b.yaml"}, "loop_a.yaml")
    _write(tmp_path, {"extends": "loop_a.yaml"}, "loop_b.yaml")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "loop_a.yaml")


def test_bad_override_syntax() -> None:
    with pytest.raises(ConfigError, match=r"expected dotted\.key=value"):
        parse_overrides(["training.max_steps"])
    with pytest.raises(ConfigError, match="empty key segment"):
        parse_overrides(["training..max_steps=3"])


def test_deepspeed_json_configs_are_valid_and_leave_recipe_values_auto() -> None:
    from accelerate.utils import DeepSpeedPlugin

    for name, stage in (("ds_zero2.json", 2), ("ds_zero3.json", 3), ("ds_zero3_offload.json", 3)):
        path = REPO / "recipes" / "accelerate" / name
        config = json.loads(path.read_text())
        assert config["zero_optimization"]["stage"] == stage
        for key in (
            "train_micro_batch_size_per_gpu",
            "gradient_accumulation_steps",
            "gradient_clipping",
        ):
            assert config[key] == "auto", f"{name}: {key} must be 'auto' (the recipe owns it)"
        assert "optimizer" not in config and "scheduler" not in config
        plugin = DeepSpeedPlugin(hf_ds_config=str(path))
        assert plugin.zero_stage == stage
        offload = (
            plugin.deepspeed_config["zero_optimization"].get("offload_optimizer", {}).get("device")
        )
        assert (offload == "cpu") == ("offload" in name)


def test_accelerate_launch_configs_are_valid() -> None:
    from accelerate.commands.config.config_args import ClusterConfig

    expected = {
        "cpu": ("NO", 1, 1),
        "single-gpu": ("NO", 1, 1),
        "ddp": ("MULTI_GPU", 8, 1),
        "zero2": ("DEEPSPEED", 8, 1),
        "zero3": ("DEEPSPEED", 8, 1),
        "zero3-offload": ("DEEPSPEED", 8, 1),
        "multinode-4x4": ("DEEPSPEED", 16, 4),
        "multinode-2x8": ("DEEPSPEED", 16, 2),
    }
    for name, (kind, processes, machines) in expected.items():
        path = REPO / "recipes" / "accelerate" / f"{name}.yaml"
        config = ClusterConfig.from_yaml_file(str(path))
        assert str(config.distributed_type).split(".")[-1] == kind, name
        assert (config.num_processes, config.num_machines) == (processes, machines), name
        if kind == "DEEPSPEED":
            ds_file = REPO / config.deepspeed_config["deepspeed_config_file"]
            assert ds_file.is_file(), f"{name}: {ds_file} missing"


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


@pytest.mark.parametrize(
    ("paper", "fixed", "expected"),
    [
        ("transfer-paper", "transfer", {
            "output_dir", "model.adapter_overrides.schedules.insertion",
            "model.adapter_overrides.schedules.unmasking", "model.adapter_overrides.head.init_gap",
            "model.adapter_overrides",
            "optimizer.group_weight_decay.lora", "optimizer.group_weight_decay",
            "optimizer.decay_norms_and_biases", "scheduler.cycles",
        }),
        ("gsm8k-paper", "gsm8k", {
            "output_dir", "model.init_from", "model.adapter_overrides.schedules.insertion",
            "model.adapter_overrides.schedules.unmasking", "model.adapter_overrides.head.init_gap",
            "model.adapter_overrides", "optimizer.weight_decay", "optimizer.decay_norms_and_biases",
            "scheduler.cycles", "training.length_bucketing",
            "data.gsm8k_template",  # the research prompt (eval/gsm8k-paper.yaml pairs with it)
        }),
    ],
)  # fmt: skip
def test_paper_variants_change_only_what_the_research_code_ran_differently(
    paper: str, fixed: str, expected: set[str]
) -> None:
    """Each *-paper.yaml is its fixed recipe plus the research settings named in its header; the
    global batch and the budget stay those of the fixed recipe."""
    a, b = (
        _flat(to_dict(load_config(REPO / f"recipes/llada-8b/{name}.yaml", check_files=False)))
        for name in (paper, fixed)
    )
    # (an empty section of the fixed recipe, e.g. model.adapter_overrides: {}, is a key of its own)
    assert {key for key in a.keys() | b.keys() if a.get(key) != b.get(key)} == expected
    assert a["model.adapter_overrides.schedules.insertion"] == "geometric(10, 0.01)"
    assert a["scheduler.cycles"] == 5
    for key in ("training.global_batch_size", "training.max_steps", "training.epochs"):
        assert a[key] == b[key]
    for arm in ("gsm8k", "code-infill"):
        mdm = load_config(REPO / f"recipes/llada-8b/mdm-{arm}-paper.yaml", check_files=False)
        assert mdm.objective.name == "mdm" and mdm.model.init_from is None
        assert mdm.optimizer.weight_decay == 0.1 and mdm.scheduler.cycles == 5
