"""`retrofit eval` / `retrofit compare`: run a benchmark spec on a checkpoint (or on completions).

    retrofit eval gsm8k --model runs/gsm8k-flexmdm --output results/gsm8k-flexmdm
    retrofit eval humaneval-infill-single-line --model user/flexmdm-llada --limit 100
    retrofit eval humaneval-infill-single-line --completions samples.jsonl --data ../shared/data/humaneval_infilling/
    accelerate launch -m retrofit.evaluate gsm8k --model DIR --output results/gsm8k   # sharded
    retrofit compare results/gsm8k-mdm results/gsm8k-flexmdm

Task ids (the `task_id` of a completions file): HumanEval's own (`SingleLineInfilling/HumanEval/0/L0`),
and `gsm8k/test/<0-based line of test.jsonl>` for GSM8K.

A spec (`eval/*.yaml`, see `retrofit.evaluation.specs`) names the data, the prompt, the sampler
settings for each checkpoint kind, the extraction and the metric. This module is the command line
alone: the runner (plan -> generate and score -> merge -> summarize, resumable and sharded) is
:mod:`retrofit.evaluation.runner`, the benchmark kinds are :mod:`retrofit.evaluation.benchmarks`,
and a checkpoint generates through :class:`retrofit.evaluation.generator.ModelGenerator` (the
inference pipeline with the spec's sampler settings).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from retrofit.console import error_line, run_command
from retrofit.evaluation.compare import compare_results
from retrofit.evaluation.generator import ModelGenerator
from retrofit.evaluation.runner import distributed_position, run_evaluation
from retrofit.evaluation.specs import load_spec

__all__ = ["build_parser", "cli_main", "compare_cli_main", "main"]


# ----------------------------------------------------------------------------- CLI
def _parse_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def build_parser() -> argparse.ArgumentParser:
    """Arguments of `retrofit eval`."""
    parser = argparse.ArgumentParser(prog="retrofit eval", description=(
        "Run a benchmark spec (eval/*.yaml or a builtin name: gsm8k, humaneval-infill-single-line, "
        "humaneval-infill-multi-line, humaneval-infill-random-span, lengths) on a checkpoint or on "
        "completions produced elsewhere."))
    parser.add_argument("spec", help="spec YAML path or builtin name")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="checkpoint directory or Hub id (FlexMDM or MDM baseline)")
    source.add_argument("--completions", type=Path,
                        help="JSONL with `task_id` and `completion` per line: score without a model")
    parser.add_argument("--revision", default=None, help="Hub revision of --model")
    parser.add_argument("--tokenizer", default=None, help="override the checkpoint's tokenizer")
    parser.add_argument("--output", type=Path, default=None,
                        help="result directory (default: results/<spec>-<model name>)")
    parser.add_argument("--data", default=None,
                        help="local data file or folder instead of the Hub / upstream download")
    parser.add_argument("--limit", type=int, default=None, help="only the first N tasks")
    parser.add_argument("--batch-size", type=int, default=None, help="prompts per generation batch")
    parser.add_argument("--samples", type=int, default=1,
                        help="samples per task (pass@k for k up to this; use --gen temperature=...)")
    parser.add_argument("--workers", type=int, default=None, help="parallel sandboxed programs")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gen", action="append", default=[], metavar="KEY=VALUE",
                        help="override a sampler argument of the spec, e.g. --gen steps=64")
    parser.add_argument("--on-long-prompt", choices=["skip", "truncate-left", "error"], default=None,
                        help="a prompt that leaves no room to answer: skip it (counted in the summary), "
                        "drop its first tokens, or stop (default: the spec's, skip)")
    parser.add_argument("--require-complete", action="store_true",
                        help="refuse completions that do not cover every task (default: warn)")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def cli_main(argv: Sequence[str] | None = None) -> int:
    """`retrofit eval ...`; returns the exit code (2 for bad arguments or inputs)."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        spec = load_spec(args.spec)
        overrides = {}
        for item in args.gen:
            if "=" not in item:
                raise ValueError(f"--gen expects KEY=VALUE, got {item!r}")
            key, value = item.split("=", 1)
            overrides[key.strip()] = _parse_value(value)
        output = None
        rank, world_size = distributed_position()
        name = Path(str(args.model or args.completions)).name.replace(".jsonl", "")
        output = args.output or Path("results") / f"{spec.name}-{name}"
        generator = None
        if args.model is not None:
            device = args.device
            if device is None and world_size > 1:
                import torch

                if torch.cuda.is_available():
                    device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
            generator = ModelGenerator(args.model, spec, revision=args.revision, tokenizer=args.tokenizer,
                                       device=device, dtype=args.dtype, overrides=overrides, seed=args.seed,
                                       on_long_prompt=args.on_long_prompt)
        summary = run_evaluation(
            spec, output, generate_fn=generator,
            completions=args.completions if args.model is None else None, data=args.data,
            limit=args.limit, rank=rank, world_size=world_size, batch_size=args.batch_size,
            num_samples=args.samples, workers=args.workers, progress=not args.no_progress,
            require_complete=args.require_complete,
        )
    except KeyboardInterrupt:
        print(f"retrofit eval: interrupted; the finished samples are kept in {output}: rerun the "
              "same command to resume", file=sys.stderr)
        return 130
    except (ValueError, KeyError, OSError, RuntimeError) as error:
        # OSError covers missing files and a checkpoint/tokenizer the Hub cannot serve offline.
        print(error_line("eval", error), file=sys.stderr)
        return 2
    if summary is not None:
        shown = {k: v for k, v in summary.items() if k not in ("spec", "settings", "model", "verdicts")}
        print(json.dumps(shown, indent=2, default=str))
        print(f"samples: {output / 'samples.jsonl'}  summary: {output / 'summary.json'}")
    return 0


def compare_cli_main(argv: Sequence[str] | None = None) -> int:
    """`retrofit compare RESULT_A RESULT_B [--output diff.json] [--show N]`."""
    parser = argparse.ArgumentParser(prog="retrofit compare", description=(
        "Paired comparison of two eval results on the same benchmark: exact McNemar test on the "
        "discordant samples and the per-sample differences."))
    parser.add_argument("result_a", help="eval --output directory (or its samples.jsonl)")
    parser.add_argument("result_b")
    parser.add_argument("--output", type=Path, default=None, help="write the full comparison JSON")
    parser.add_argument("--show", type=int, default=20, help="differing samples to print")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        report = compare_results(args.result_a, args.result_b)
    except (ValueError, FileNotFoundError) as error:
        print(error_line("compare", error), file=sys.stderr)
        return 2
    print(f"A: {report['a']}\nB: {report['b']}")
    print(f"paired samples: {report['num_pairs']}  accuracy A {report['accuracy_a']:.4f}  "
          f"B {report['accuracy_b']:.4f}  B-A {report['difference_b_minus_a']:+.4f}")
    print(f"both correct {report['both_correct']}  only A {report['a_only_correct']}  "
          f"only B {report['b_only_correct']}  both wrong {report['both_wrong']}  "
          f"McNemar exact p = {report['mcnemar_exact_p']:.4g}")
    for row in report["diff"][: args.show]:
        winner = "A" if row["a_correct"] else "B"
        print(f"  {winner} only  {row['task_id']}  A={row['a_extracted']!r}  B={row['b_extracted']!r}")
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


def main() -> None:
    """`python -m retrofit.evaluate` / `accelerate launch -m retrofit.evaluate`: eval, or compare
    when the first argument is `compare`."""
    argv = sys.argv[1:]
    if argv and argv[0] == "compare":
        code = run_command("compare", compare_cli_main, argv[1:])
    else:
        code = run_command("eval", cli_main, argv[1:] if argv and argv[0] == "eval" else argv)
    sys.stdout.flush()
    sys.stderr.flush()
    # Multi-process launches: leave without interpreter teardown (torch + gloo can abort there).
    os._exit(code)


if __name__ == "__main__":
    main()

