"""Demo stages 1-3 for one seed: data, pretraining (cached), fine-tuning both arms (cached).

Training goes through ``retrofit.train.train`` with the recipes in ``recipes/tiny/demo-*.yaml``
and ``key=value`` overrides, exactly what ``retrofit train`` runs (each stage's command is written
to the report).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shlex
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .settings import ARM_TITLES, ARMS, DemoPaths, DemoSettings, SeedPaths
from .task import LENGTH_DISTRIBUTION, build_tokenizer, make_infill_tasks, sample_strings

__all__ = ["RECIPES", "log", "pretrain_plan", "run_finetune", "run_pretrain", "write_data"]

RECIPES = {
    "pretrain": "recipes/tiny/demo-pretrain.yaml",
    "flexmdm": "recipes/tiny/demo-flexmdm.yaml",
    "mdm": "recipes/tiny/demo-mdm.yaml",
}
KEY_FILE = "demo_key.txt"


def log(message: str) -> None:
    """One progress line."""
    print(f"[demo] {message}", flush=True)


# ---------------------------------------------------------------------------------------------
# Stage 1: data
# ---------------------------------------------------------------------------------------------


def _write_jsonl(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file."""
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _training_records(strings: Sequence[str], share: float, rng: random.Random) -> list[dict]:
    """Fine-tuning records: ``share`` of them infilling tasks, the rest whole strings (an empty
    prefix and suffix), shuffled."""
    count = round(share * len(strings))
    tasks = make_infill_tasks(strings[:count], count, rng) if count else []
    records = [{"prefix": t.prefix, "output": t.middle, "suffix": t.suffix} for t in tasks]
    records += [{"prefix": "", "output": text, "suffix": ""} for text in strings[count:]]
    rng.shuffle(records)
    return records


def _task_records(kind: str, split: str, strings: Sequence[str], count: int,
                  rng: random.Random) -> list[dict]:
    """The eval runner's task records: plain samples (an empty prefix and suffix; the reference is
    a held-out string) or infilling tasks (the reference is the removed middle)."""
    if kind == "unconditional":
        return [{"task_id": f"{split}/unconditional/{index}", "prefix": "", "suffix": "",
                 "reference": text} for index, text in enumerate(strings[:count])]
    return [{"task_id": f"{split}/infill/{index}", "prefix": task.prefix, "suffix": task.suffix,
             "reference": task.middle}
            for index, task in enumerate(make_infill_tasks(strings, count, rng))]


def write_data(paths: SeedPaths, settings: DemoSettings, seed: int) -> dict[str, Any]:
    """Strings, training records, selection and evaluation tasks, and the tokenizer of a seed."""
    rng = random.Random(seed)
    train = sample_strings(settings.num_train, rng)
    selection = sample_strings(settings.num_heldout, rng)
    evaluation = sample_strings(settings.num_heldout, rng)
    _write_jsonl(paths.records("pretrain"),
                 [{"prefix": "", "output": text, "suffix": ""} for text in train])
    _write_jsonl(paths.records("train"), _training_records(train, settings.infill_share, rng))
    sizes = {"select": (settings.selection_samples, settings.selection_infill),
             "eval": (settings.num_samples, settings.num_infill)}
    for split, strings in (("select", selection), ("eval", evaluation)):
        for kind, count in zip(("unconditional", "infill"), sizes[split]):
            _write_jsonl(paths.tasks(split, kind), _task_records(kind, split, strings, count, rng))
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(str(paths.tokenizer))
    info = {
        "seed": seed,
        "num_train": len(train),
        "length_distribution": {str(k): v for k, v in LENGTH_DISTRIBUTION.items()},
        "train_sha256": hashlib.sha256(paths.records("train").read_bytes()).hexdigest(),
        "pretrain_sha256": hashlib.sha256(paths.records("pretrain").read_bytes()).hexdigest(),
        "vocab": tokenizer.get_vocab(),
    }
    (paths.data / "data_info.json").write_text(json.dumps(info, indent=2))
    return info


# ---------------------------------------------------------------------------------------------
# Stages 2-3: training through retrofit.train
# ---------------------------------------------------------------------------------------------


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def _recipe_path(name: str) -> Path:
    path = _repo_root() / RECIPES[name]
    if not path.is_file():
        raise FileNotFoundError(f"demo recipe {path} is missing; restore {RECIPES[name]}")
    return path


def _common_overrides(demo: DemoPaths, paths: SeedPaths, settings: DemoSettings, seed: int,
                      records: str) -> list[str]:
    return [
        f"data.path={paths.records(records)}",
        f"data.cache_dir={demo.cache / 'datasets'}",
        f"tokenizer.name={paths.tokenizer}",
        f"training.seed={seed}",
        f"data.seed={seed}",
        f"logging.progress_bar={'true' if settings.progress else 'false'}",
    ]


def pretrain_overrides(demo: DemoPaths, paths: SeedPaths, settings: DemoSettings, seed: int,
                       output_dir: Path) -> list[str]:
    """The ``key=value`` overrides of ``demo-pretrain.yaml`` for one seed."""
    tiny = (
        f"{{d_model: {settings.d_model}, n_layers: {settings.n_layers}, n_heads: {settings.n_heads}, "
        f"n_kv_heads: {settings.n_heads}, mlp_hidden_size: {settings.mlp_hidden_size}, "
        f"max_sequence_length: 256}}"
    )
    return [
        f"output_dir={output_dir}",
        *_common_overrides(demo, paths, settings, seed, "pretrain"),
        f"model.tiny={tiny}",
        f"training.max_steps={settings.pretrain_steps}",
        f"training.micro_batch_size={settings.pretrain_batch_size}",
        f"optimizer.lr={settings.pretrain_lr}",
    ]


def finetune_overrides(demo: DemoPaths, paths: SeedPaths, settings: DemoSettings, seed: int,
                       base_dir: Path, output_dir: Path) -> list[str]:
    """The overrides of ``demo-flexmdm.yaml`` / ``demo-mdm.yaml`` (identical for both arms)."""
    return [
        f"output_dir={output_dir}",
        f"model.base={base_dir}",
        *_common_overrides(demo, paths, settings, seed, "train"),
        f"training.max_steps={settings.finetune_steps}",
        f"training.micro_batch_size={settings.finetune_batch_size}",
        f"optimizer.lr={settings.finetune_lr}",
    ]


def train_command(recipe: str, overrides: Sequence[str]) -> str:
    """The ``retrofit train`` command line of a stage."""
    return " ".join(["retrofit", "train", RECIPES[recipe], *(shlex.quote(item) for item in overrides)])


def _stage_key(recipe: str, overrides: Sequence[str], inputs: Mapping[str, Any]) -> str:
    """Hash of everything a trained stage depends on: its resolved recipe (paths, logging and
    seeds' file locations excluded), the data and the tokenizer it reads, the package version."""
    from retrofit import __version__
    from retrofit.config import load_config, to_dict

    resolved = to_dict(load_config(_recipe_path(recipe), overrides, check_files=False))
    for key in ("output_dir", "logging"):
        resolved.pop(key, None)
    for key in ("path", "cache_dir"):
        resolved["data"].pop(key, None)
    resolved["tokenizer"].pop("name", None)
    resolved["model"].pop("base", None)
    payload = {"recipe": resolved, "inputs": dict(inputs), "retrofit": __version__}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def _summary_of(output_dir: Path) -> dict[str, Any]:
    summary_path = output_dir / "train_summary.json"
    if not summary_path.is_file():
        return {}
    summary = json.loads(summary_path.read_text())
    return {key: summary.get(key) for key in ("steps", "elapsed_s", "final_loss", "global_batch_size")}


def _data_hashes(paths: SeedPaths) -> dict[str, Any]:
    return json.loads((paths.data / "data_info.json").read_text())


def pretrain_plan(demo: DemoPaths, paths: SeedPaths, settings: DemoSettings, seed: int) -> dict:
    """Where the pretrained MDM of a seed lives (a cache keyed by its settings and data) and the
    command that trains it."""
    info = _data_hashes(paths)
    inputs = {"data": info["pretrain_sha256"], "vocab": info["vocab"]}
    key = _stage_key("pretrain", pretrain_overrides(demo, paths, settings, seed, Path("pending")), inputs)
    output_dir = demo.cache / f"pretrain-{key}"
    overrides = pretrain_overrides(demo, paths, settings, seed, output_dir)
    return {"dir": str(output_dir), "final": str(output_dir / "final"), "cache_key": key,
            "command": train_command("pretrain", overrides), "overrides": overrides}


def _trained(final: Path) -> bool:
    return (final / "retrofit_config.json").is_file()


def run_pretrain(demo: DemoPaths, paths: SeedPaths, settings: DemoSettings, seed: int, *,
                 force: bool) -> dict[str, Any]:
    """Pretrain the seed's tiny MDM, or reuse the cached one."""
    from retrofit.config import load_config
    from retrofit.train import train

    plan = pretrain_plan(demo, paths, settings, seed)
    output_dir = Path(plan["dir"])
    if _trained(Path(plan["final"])) and not force:
        log(f"seed {seed}: pretrained MDM found in the cache ({output_dir.name}; --force retrains)")
        return {**plan, "cached": True, **_summary_of(output_dir)}
    shutil.rmtree(output_dir, ignore_errors=True)
    log(f"seed {seed}: pretraining a tiny LLaDA MDM ({settings.pretrain_steps} steps) -> {output_dir}")
    train(load_config(_recipe_path("pretrain"), plan["overrides"]), recipe_path=RECIPES["pretrain"])
    return {**plan, "cached": False, **_summary_of(output_dir)}


def finetune_plan(demo: DemoPaths, paths: SeedPaths, settings: DemoSettings, seed: int,
                  base: Mapping[str, Any]) -> dict[str, Any]:
    """Output directory, cache key and command of each arm."""
    info = _data_hashes(paths)
    plans = {}
    for arm in ARMS:
        output_dir = paths.arm(arm)
        overrides = finetune_overrides(demo, paths, settings, seed, Path(base["final"]), output_dir)
        inputs = {"data": info["train_sha256"], "vocab": info["vocab"], "base": base["cache_key"]}
        plans[arm] = {"dir": str(output_dir), "final": str(output_dir / "final"),
                      "cache_key": _stage_key(arm, overrides, inputs),
                      "command": train_command(arm, overrides), "overrides": overrides,
                      **_summary_of(output_dir)}
    return plans


def run_finetune(demo: DemoPaths, paths: SeedPaths, settings: DemoSettings, seed: int,
                 base: Mapping[str, Any], *, force: bool, arms: Sequence[str] = ARMS) -> dict[str, Any]:
    """Fine-tune the arms from the seed's pretrained MDM with the same budget (an arm already
    trained with the same key is reused)."""
    from retrofit.config import load_config
    from retrofit.train import train

    plans = finetune_plan(demo, paths, settings, seed, base)
    for arm in arms:
        output_dir, key_file = Path(plans[arm]["dir"]), Path(plans[arm]["dir"]) / KEY_FILE
        key = plans[arm]["cache_key"]
        if not force and _trained(output_dir / "final") and key_file.is_file() \
                and key_file.read_text().strip() == key:
            log(f"seed {seed}: {ARM_TITLES[arm]} arm already trained with these settings ({output_dir})")
            continue
        shutil.rmtree(output_dir, ignore_errors=True)
        log(f"seed {seed}: fine-tuning the {ARM_TITLES[arm]} arm ({settings.finetune_steps} steps) "
            f"-> {output_dir}")
        train(load_config(_recipe_path(arm), plans[arm]["overrides"]), recipe_path=RECIPES[arm])
        key_file.write_text(key + "\n")
    return finetune_plan(demo, paths, settings, seed, base)
