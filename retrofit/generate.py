"""`retrofit generate`: sample from a checkpoint and print the text.

    retrofit generate --model runs/gsm8k --prompt "What is 12 * 7?"
    retrofit generate --model runs/code --prefix "def add(a, b):\\n" --suffix "\\n    return c\\n"
    retrofit generate --model user/flexmdm-llada --prompts prompts.jsonl --output out.jsonl

The checkpoint is loaded by :class:`retrofit.pipeline.Pipeline` (local directory or Hub id); its
kind picks the sampler: ``flexmdm`` -> :func:`retrofit.sampling.flexmdm_generate` (insert +
unmask), ``mdm`` -> :func:`retrofit.sampling.mdm_generate` (LLaDA's semi-autoregressive sampler).
The tokenizer is the one saved in the checkpoint directory, else the base model's recorded in
``retrofit_config.json`` (``--tokenizer`` overrides both).

Prompts are encoded exactly as in training, with the prompt layout the checkpoint records
(``retrofit_config.json``'s ``prompt_layout``, written by ``retrofit train``: chat template or plain
format, boundary markers, response suffix, EOS; ``--chat-template`` / ``--infill-markers``
override it). Infilling (``--prefix``/``--suffix``, or JSONL records with ``prefix`` and ``suffix``)
uses the training layouts: FlexMDM grows the middle between the boundary markers
(``prompt + prefix + START`` ... ``END + suffix``); the MDM baseline gets the PSM prompt
(``{instruction}\\n<prefix>..</prefix><suffix>..</suffix>``) and generates ``--gen-length`` tokens.
An answer ends at the first stop id the checkpoint records (EOS or end of turn).

JSONL records: ``{"prompt": "..."}`` or ``{"prefix": "...", "suffix": "...", "prompt": optional
instruction}``, optionally with an ``"id"``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "cli_main", "load_prompts", "sampling_settings"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``retrofit generate``."""
    parser = argparse.ArgumentParser(
        prog="retrofit generate",
        description="Sample from a FlexMDM (or MDM baseline) checkpoint and print the text.",
    )
    source = parser.add_argument_group("model")
    source.add_argument("--model", required=True, help="checkpoint directory or Hub id")
    source.add_argument("--revision", default=None, help="Hub revision of the checkpoint")
    source.add_argument("--base-model", default=None, help="override the recorded base model")
    source.add_argument("--tokenizer", default=None, help="tokenizer directory or Hub id")
    source.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                        help="backbone dtype (auto: bfloat16 on GPU, float32 on CPU)")
    source.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")

    inputs = parser.add_argument_group("prompts")
    inputs.add_argument("--prompt", action="append", default=[],
                        help="a prompt (repeatable); with --prefix/--suffix: the instruction")
    inputs.add_argument("--prompts", type=Path, default=None, help="JSONL file of prompts")
    inputs.add_argument("--prefix", default=None, help="infilling: text before the middle")
    inputs.add_argument("--suffix", default=None, help="infilling: text after the middle")
    inputs.add_argument("--chat-template", default=None, choices=["auto", "always", "never"],
                        help="default: the checkpoint's prompt layout (else auto)")
    inputs.add_argument("--infill-markers", nargs=2, default=None, metavar=("START", "END"),
                        help="FlexMDM boundary markers (default: the checkpoint's prompt layout; "
                        "'' '' for none)")

    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--steps", type=int, default=256)
    sampling.add_argument("--seed", type=int, default=0)
    sampling.add_argument("--temperature", type=float, default=0.0)
    sampling.add_argument("--batch-size", type=int, default=16,
                          help="prompts per forward batch (outputs do not depend on it)")
    sampling.add_argument("--sort-by-length", action="store_true",
                          help="batch prompts of similar length together (outputs unchanged)")
    sampling.add_argument("--confidence", default="prob_diff",
                          choices=["prob_diff", "top_prob", "entropy", "position"], help="FlexMDM")
    sampling.add_argument("--top-p", type=float, default=1.0, help="FlexMDM")
    sampling.add_argument("--window", "--window-alpha", dest="window_alpha", type=float,
                          default=None, help="FlexMDM sliding window factor alpha_w")
    sampling.add_argument("--max-window", type=int, default=None, help="FlexMDM")
    sampling.add_argument("--max-length", type=int, default=None,
                          help="FlexMDM: bound on prompt + answer (default: the checkpoint's)")
    sampling.add_argument("--stop-threshold", type=float, default=0.05, help="FlexMDM")
    sampling.add_argument("--allow-eos", action="store_true",
                          help="FlexMDM: allow emitting the EOS id even where it equals pad")
    sampling.add_argument("--fixed-buffer", action="store_true", help="FlexMDM: full buffer")
    sampling.add_argument("--insertion-draw", choices=["binomial", "poisson"], default="binomial",
                          help="FlexMDM: how insertions are drawn (binomial: exact as rates become "
                          "exact; poisson: the paper's)")
    sampling.add_argument("--unmask-threshold", type=float, default=None,
                          help="FlexMDM fast mode: also commit every mask this confident")
    sampling.add_argument("--jump-insertions", type=float, default=None,
                          help="FlexMDM fast mode: with nothing to unmask, jump ahead while at most "
                          "this many insertions are expected")
    sampling.add_argument("--prefix-cache", action="store_true",
                          help="FlexMDM fast mode: reuse the prompt's keys/values (approximate)")
    sampling.add_argument("--prefix-cache-refresh", type=int, default=None,
                          help="FlexMDM: recompute the reused prompt keys/values every N forwards")
    sampling.add_argument("--gen-length", type=int, default=256, help="MDM")
    sampling.add_argument("--block-length", type=int, default=None, help="MDM (default: gen-length)")
    sampling.add_argument("--remasking", default="low_confidence",
                          choices=["low_confidence", "random"], help="MDM")
    sampling.add_argument("--cfg-scale", type=float, default=0.0, help="MDM")

    outputs = parser.add_argument_group("output")
    outputs.add_argument("--output", type=Path, default=None, help="write results as JSONL")
    outputs.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    outputs.add_argument("--trace-plot", type=Path, default=None, help="save a length/clean plot")
    outputs.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def load_prompts(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Prompt records from the command line and/or a JSONL file.

    Each record has ``prompt`` (str or None), ``prefix``/``suffix`` (None unless infilling), ``id``.
    """
    records: list[dict[str, Any]] = []
    if (args.prefix is None) != (args.suffix is None):
        raise ValueError("infilling needs both --prefix and --suffix (either may be an empty string)")
    if args.prefix is not None:
        if len(args.prompt) > 1:
            raise ValueError("with --prefix/--suffix give at most one --prompt (the instruction)")
        instruction = args.prompt[0] if args.prompt else None
        records.append({"id": 0, "prompt": instruction, "prefix": args.prefix, "suffix": args.suffix})
    else:
        records += [{"id": i, "prompt": text, "prefix": None, "suffix": None}
                    for i, text in enumerate(args.prompt)]
    if args.prompts is not None:
        if not args.prompts.is_file():
            raise FileNotFoundError(f"--prompts file {args.prompts} does not exist")
        with args.prompts.open(encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{args.prompts}:{line_number}: not valid JSON ({error})") from None
                if not isinstance(record, dict) or not (
                    isinstance(record.get("prompt"), str)
                    or ("prefix" in record and "suffix" in record)
                ):
                    raise ValueError(
                        f"{args.prompts}:{line_number}: expected {{\"prompt\": ...}} or "
                        f"{{\"prefix\": ..., \"suffix\": ...}}, got {line.strip()[:80]}"
                    )
                records.append({
                    "id": record.get("id", len(records)),
                    "prompt": record.get("prompt"),
                    "prefix": record.get("prefix"),
                    "suffix": record.get("suffix"),
                })
    if not records:
        raise ValueError("no prompts: pass --prompt TEXT, --prefix/--suffix or --prompts FILE.jsonl")
    infill = {record["prefix"] is not None for record in records}
    if len(infill) > 1:
        raise ValueError("mix of infilling and plain prompts: run them in separate calls")
    return records


def sampling_settings(args: argparse.Namespace, pipeline: Any) -> dict[str, Any]:
    """The sampler settings of the command line for the checkpoint's kind."""
    common = {"steps": args.steps, "temperature": args.temperature, "batch_size": args.batch_size,
              "sort_by_length": args.sort_by_length}
    if pipeline.kind == "mdm":
        return {**common, "gen_length": args.gen_length, "block_length": args.block_length,
                "cfg_scale": args.cfg_scale, "remasking": args.remasking}
    ids = pipeline.special_ids
    forbid = [ids.mask] if args.allow_eos and ids.eos == ids.pad else None
    return {**common, "confidence": args.confidence, "top_p": args.top_p,
            "window_alpha": args.window_alpha, "max_window": args.max_window,
            "max_length": args.max_length, "stop_threshold": args.stop_threshold,
            "forbid_token_ids": forbid, "fixed_buffer": args.fixed_buffer,
            "insertion_draw": args.insertion_draw, "unmask_threshold": args.unmask_threshold,
            "jump_insertions": args.jump_insertions, "prefix_cache": args.prefix_cache,
            "prefix_cache_refresh": args.prefix_cache_refresh}


def cli_main(argv: list[str] | None = None) -> int:
    """Run ``retrofit generate``; returns the exit code (2 for bad arguments or inputs)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        records = load_prompts(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"retrofit generate: {error}", file=sys.stderr)
        return 2

    from retrofit.pipeline import Pipeline, Task
    from retrofit.sampling import SamplingTrace, plot_trace

    pipeline = Pipeline.from_pretrained(
        args.model, revision=args.revision, base_model=args.base_model, tokenizer=args.tokenizer,
        device=args.device, dtype=args.dtype,
        layout_overrides={"chat_template": args.chat_template, "infill_markers": args.infill_markers},
    )  # fmt: skip
    trace = SamplingTrace() if args.trace_plot is not None else None
    tasks = [Task(prompt=r["prompt"], prefix=r["prefix"], suffix=r["suffix"]) for r in records]
    try:
        answers = pipeline.generate(
            tasks, sampling_settings(args, pipeline), seed=args.seed,
            progress=not args.no_progress, trace=trace,
        )  # fmt: skip
    except ValueError as error:
        print(f"retrofit generate: {error}", file=sys.stderr)
        return 2

    rows = []
    for record, answer in zip(records, answers):
        row = {"id": record["id"], "text": answer.text, "num_tokens": answer.num_tokens,
               "steps": answer.forward_passes}
        if pipeline.kind != "mdm":
            row["truncated"] = answer.truncated
        rows.append(row)
        if args.json:
            print(json.dumps(row, ensure_ascii=False))
        elif len(records) == 1:
            print(answer.text)
        else:
            print(f"=== [{record['id']}] ({answer.num_tokens} tokens) ===\n{answer.text}")
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with args.output.open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    if trace is not None:
        plot_trace(trace, args.trace_plot)
        print(f"trace plot written to {args.trace_plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli_main())
