"""``retrofit demo``: orchestration of the stages over seeds, and the command line."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from .decoding import (
    choose_settings,
    decoding_grid,
    score_setting,
    selection_is_current,
    supports_draws,
)
from .report import aggregate, check_claim, plot_lengths, results_table, write_results
from .scoring import bayes_check, evaluate_arm
from .settings import ARM_TITLES, ARMS, DemoPaths, DemoSettings, SeedPaths
from .stages import log, pretrain_plan, run_finetune, run_pretrain, write_data

__all__ = ["STAGES", "build_parser", "cli_main", "run_demo"]

STAGES = ("all", "data", "pretrain", "finetune", "select", "eval")


def _require(path: Path, stage: str, root: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `retrofit demo --stage {stage} --output {root}` first")


def _count_parameters(base_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for file in sorted(Path(base_dir).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in list(handle.keys()):
                total += math.prod(handle.get_slice(key).get_shape())
    return total


def _arm_identity(paths: SeedPaths, arm: str) -> str:
    key_file = paths.arm(arm) / "demo_key.txt"
    return key_file.read_text().strip() if key_file.is_file() else str(paths.arm(arm))


def _timed(timings: dict[str, float], name: str, function, *args, **kwargs):
    begin = time.perf_counter()
    value = function(*args, **kwargs)
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - begin
    return value


def _worker_setup(settings: DemoSettings) -> None:
    """One torch thread per worker process (the workers share the cores)."""
    if settings.num_workers > 1:
        import torch

        torch.set_num_threads(1)


def _pretrain_seed(root: Path, settings: DemoSettings, seed: int, force: bool) -> dict:
    """Pretrain one seed's MDM (or find it in the cache); returns timings."""
    _worker_setup(settings)
    demo, timings = DemoPaths(root), {}
    paths = demo.seed(seed)
    _require(paths.data / "data_info.json", "data", root)
    _timed(timings, "pretrain", run_pretrain, demo, paths, settings, seed, force=force)
    return timings


def _finetune_arm(root: Path, settings: DemoSettings, seed: int, arm: str, force: bool) -> dict:
    """Fine-tune one arm of one seed (or reuse it); returns timings."""
    _worker_setup(settings)
    demo, timings = DemoPaths(root), {}
    paths = demo.seed(seed)
    base = pretrain_plan(demo, paths, settings, seed)
    _require(Path(base["final"]) / "config.json", "pretrain", root)
    _timed(timings, "finetune", run_finetune, demo, paths, settings, seed, base, force=force, arms=[arm])
    return timings


def _score_setting(root: Path, settings: DemoSettings, arm: str, index: int) -> dict:
    """One decoding setting of one arm on the first seed's held-out strings; returns timings."""
    _worker_setup(settings)
    paths = DemoPaths(root).seed(settings.seed)
    result = score_setting(arm, index, paths, settings, settings.seed, _arm_identity(paths, arm))
    return {"select": result["seconds"]}


def _evaluate_arm(root: Path, settings: DemoSettings, seed: int, arm: str) -> dict:
    """One arm of one seed with the chosen settings (and, for the FlexMDM, the head check);
    metrics into ``eval/``. Returns timings."""
    _worker_setup(settings)
    demo = DemoPaths(root)
    paths = demo.seed(seed)
    begin = time.perf_counter()
    selection = demo.seed(settings.seed).selection(arm)
    _require(selection, "select", root)
    chosen = json.loads(selection.read_text())["chosen"]
    metrics = evaluate_arm(arm, paths, settings, seed, chosen)
    (paths.eval / f"{arm}_metrics.json").write_text(json.dumps(metrics, indent=2))
    if arm == "flexmdm":
        log(f"seed {seed}: checking the insertion head against the Bayes-optimal E[L - l | l, t]")
        check = bayes_check(paths, settings, seed)
        (paths.eval / "bayes_check.json").write_text(json.dumps(check, indent=2))
    return {"eval": time.perf_counter() - begin}


def _select(root: Path, settings: DemoSettings) -> None:
    """Score every setting of both grids on the first seed (in parallel), then apply the rule."""
    paths = DemoPaths(root).seed(settings.seed)
    jobs = []
    for arm in ARMS:
        _require(paths.arm(arm) / "final" / "retrofit_config.json", "finetune", root)
        if selection_is_current(arm, paths, settings, settings.seed, _arm_identity(paths, arm)):
            log(f"seed {settings.seed}: {ARM_TITLES[arm]} settings already chosen "
                f"({paths.selection(arm)})")
            continue
        grid = decoding_grid(arm, settings)
        log(f"seed {settings.seed}: choosing the {ARM_TITLES[arm]} decoding settings ({len(grid)} "
            f"settings x {settings.selection_samples} samples + {settings.selection_infill} "
            "infillings, held-out)")
        jobs += [(root, settings, arm, index) for index in range(len(grid))]
    _in_parallel(settings, _score_setting, jobs)
    for arm in ARMS:
        choose_settings(arm, paths, settings, settings.seed, _arm_identity(paths, arm))


def _in_parallel(settings: DemoSettings, function, jobs: Sequence[tuple]) -> list:
    """``function(*job)`` for every job, in ``settings.num_workers`` processes (in this process
    when there is one worker or one job); results in job order."""
    if settings.num_workers <= 1 or len(jobs) <= 1:
        return [function(*job) for job in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=settings.num_workers, mp_context=context) as pool:
        futures = [pool.submit(function, *job) for job in jobs]
        return [future.result() for future in futures]


def _add(timings: dict[str, float], more: Sequence[dict[str, float]]) -> None:
    for entry in more:
        for key, value in entry.items():
            timings[key] = timings.get(key, 0.0) + value


def _commands(demo: DemoPaths, settings: DemoSettings, quick: bool) -> list[str]:
    from .stages import finetune_plan

    seed, root = settings.seed, demo.root
    flags = f"--output {root} --seed {seed} --seeds 1" + (" --quick" if quick else "")
    paths = demo.seed(seed)
    base = pretrain_plan(demo, paths, settings, seed)
    arms = finetune_plan(demo, paths, settings, seed, base)
    return [f"retrofit demo --stage data {flags}      # strings, tasks, tokenizer", base["command"],
            arms["flexmdm"]["command"], arms["mdm"]["command"],
            f"retrofit demo --stage select {flags}    # decoding settings on held-out strings",
            f"retrofit demo --stage eval {flags}      # samples, metrics, PNGs, results.md"]


def build_report(demo: DemoPaths, settings: DemoSettings, timings: dict[str, float],
                 quick: bool) -> dict[str, Any]:
    """Aggregate every seed's metrics into results.json / results.md / lengths.png."""
    per_seed = {arm: [] for arm in ARMS}
    selections = {arm: [] for arm in ARMS}
    bayes = []
    for seed in settings.seeds:
        paths = demo.seed(seed)
        for arm in ARMS:
            _require(paths.eval / f"{arm}_metrics.json", "eval", demo.root)
            per_seed[arm].append(json.loads((paths.eval / f"{arm}_metrics.json").read_text()))
        bayes.append(json.loads((paths.eval / "bayes_check.json").read_text()))
    for arm in ARMS:  # chosen once, on the first seed
        selections[arm].append(json.loads(demo.seed(settings.seed).selection(arm).read_text()))
    arms = aggregate(per_seed, {"unconditional": settings.num_samples, "infill": settings.num_infill})
    plot_lengths({arm: [v for e in per_seed[arm] for v in e["lengths"]] for arm in ARMS},
                 {arm: arms[arm]["length_w1"] for arm in ARMS}, demo.root / "lengths.png")
    base = pretrain_plan(demo, demo.seed(settings.seed), settings, settings.seed)
    result = {
        "task": "sorted letter strings", "seeds": settings.seeds, "arms": arms,
        "claim": check_claim(per_seed), "settings": asdict(settings),
        "insertion_draw_available": supports_draws(),
        "per_seed": {arm: [{k: v for k, v in e.items() if k != "lengths"} for e in per_seed[arm]]
                     for arm in ARMS},
        "selections": selections, "bayes": bayes, "timings": timings,
        "model_parameters": _count_parameters(Path(base["final"])),
        "commands": _commands(demo, settings, quick),
    }
    write_results(demo.root, result)
    return result


def run_demo(output: str | os.PathLike[str] = "demo_output", settings: DemoSettings | None = None,
             *, stage: str = "all", force: bool = False, quick: bool = False) -> dict[str, Any]:
    """Run the demo (or one stage of it, for every seed) into ``output``; after ``all`` or
    ``eval`` returns the report (see results.json), else the timings.

    Seeds train in parallel worker processes (``settings.num_workers``); the decoding settings are
    chosen once, on the first seed's held-out strings (both arms in parallel), then every seed is
    evaluated with them. ``timings`` add up the workers' seconds per stage (``total`` is wall time).
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    settings = settings or (DemoSettings.quick() if quick else DemoSettings.full())
    if settings.num_workers > 1:
        settings = replace(settings, progress=False)  # parallel progress bars would interleave
    root = Path(output)
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    log(f"seeds {settings.seeds}, {settings.num_workers} worker process(es)")
    if stage in ("all", "data"):
        for seed in settings.seeds:
            paths = DemoPaths(root).seed(seed)
            log(f"seed {seed}: writing {settings.num_train} training strings, tasks and the "
                f"tokenizer -> {paths.data}")
            _timed(timings, "data", write_data, paths, settings, seed)
    if stage in ("all", "pretrain"):
        jobs = [(root, settings, seed, force) for seed in settings.seeds]
        _add(timings, _in_parallel(settings, _pretrain_seed, jobs))
    if stage in ("all", "finetune"):
        jobs = [(root, settings, seed, arm, force) for seed in settings.seeds for arm in ARMS]
        _add(timings, _in_parallel(settings, _finetune_arm, jobs))
    if stage in ("all", "select"):
        begin = time.perf_counter()
        _select(root, settings)
        timings["select_wall"] = time.perf_counter() - begin
    if stage in ("all", "eval"):
        jobs = [(root, settings, seed, arm) for seed in settings.seeds for arm in ARMS]
        _add(timings, _in_parallel(settings, _evaluate_arm, jobs))
    if stage not in ("all", "eval"):
        return {"timings": timings}
    timings["total"] = time.perf_counter() - started
    result = build_report(DemoPaths(root), settings, timings, quick)
    print()
    print(results_table(result["arms"]))
    ratios = ", ".join(f"{check['w1_ratio']:.2f}" for check in result["claim"]["per_seed"])
    print(f"\nclaim on every seed: {result['claim']['holds_on_every_seed']} (FlexMDM / MDM length "
          f"W1 per seed: {ratios})")
    print(f"report: {root / 'results.md'}   histogram: {root / 'lengths.png'}")
    return result


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``retrofit demo``."""
    parser = argparse.ArgumentParser(
        prog="retrofit demo",
        description="CPU demo: pretrain a tiny LLaDA MDM, retrofit it into a FlexMDM, fine-tune it "
        "and an MDM baseline for the same budget, choose each arm's decoding by one rule on "
        "held-out strings, and compare length fidelity, validity and infilling over seeds.",
    )
    parser.add_argument("--output", default="demo_output", help="output directory (default: demo_output)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="number of seeds: --seed, --seed + 1, ... (default 3; --quick: 2)")
    parser.add_argument("--quick", action="store_true", help="test-size run (tiny model, few steps)")
    parser.add_argument("--force", action="store_true", help="retrain even what is cached")
    parser.add_argument("--stage", default="all", choices=STAGES, help="run only one stage")
    return parser


def cli_main(argv: Sequence[str] | None = None) -> int:
    """``retrofit demo [--output DIR] [--seed S] [--seeds N] [--quick] [--force] [--stage S]``."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.seeds is not None and args.seeds < 1:
        print("retrofit demo: --seeds must be >= 1", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    from retrofit.config import ConfigError

    settings = DemoSettings.quick() if args.quick else DemoSettings.full()
    settings = settings.with_seeds(args.seed, args.seeds or settings.num_seeds)
    try:
        run_demo(args.output, settings, stage=args.stage, force=args.force, quick=args.quick)
    except (FileNotFoundError, ConfigError) as error:
        print(f"retrofit demo: {error}", file=sys.stderr)
        return 2
    return 0
