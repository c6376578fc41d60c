"""`retrofit bpt`: bits per token (variational bound) of checkpoints on held-out data, side by side.

    retrofit bpt --model runs/flexmdm/final --model runs/mdm/final --data heldout.jsonl
    retrofit bpt --model runs/flexmdm/final --model runs/mdm/final --data heldout.jsonl \\
        --mdm-canvas 64 --limit 200 --output bpt.json

The paper's perplexity claim (a FlexMDM matches the MDM it came from) at any scale. Records are
JSONL: ``{"prompt": ..., "response": ...}`` (the response is scored given the prompt, rendered in
each checkpoint's recorded prompt layout through :class:`retrofit.pipeline.Pipeline`) or
``{"text": ...}`` (scored given BOS alone). Each checkpoint scores the response as it was trained
on it:

- FlexMDM: the response (+ EOS when its layout appends one): the variational bound of
  :func:`retrofit.likelihood.flexmdm_log_likelihood`, which includes the choice of the length;
- MDM baseline: the response + EOS when its layout appends one, padded with EOS to
  ``--mdm-canvas`` tokens when given (LLaDA-style training canvases, e.g. the demo's 64): LLaDA's
  estimator of :func:`retrofit.likelihood.mdm_log_likelihood`.

Bits per token = total NLL / (response tokens x ln 2) over the records both models could score:
EOS and padding are predicted but not counted, so the two checkpoints are measured on the same text
(bits per byte of the response's UTF-8 text too, which does not depend on the tokenizer). The
interval is +-1.96 Monte Carlo standard errors (the records' errors add in quadrature): it says
how far more samples (``--mc-num``) could move the number, not how the data could.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "cli_main", "encode_records", "format_table", "score_checkpoint"]

Z_95 = 1.959963984540054


def _read_records(path: Path, limit: int | None) -> list[dict[str, str]]:
    """The JSONL records of ``path`` (``prompt``/``response`` or ``text``), first ``limit``."""
    if not path.is_file():
        raise FileNotFoundError(f"--data {path} does not exist")
    from retrofit.evaluation.benchmarks.base import numbered_jsonl

    records = []
    for number, record in numbered_jsonl(path):  # a line that is not a JSON object names file:line
        if isinstance(record.get("text"), str):
            records.append({"prompt": None, "response": record["text"]})
        elif isinstance(record.get("response"), str):
            records.append({"prompt": record.get("prompt") or "", "response": record["response"]})
        else:
            raise ValueError(  # noqa: TRY004 - a bad input file, not a programming error
                f"{path}:{number}: expected {{\"prompt\", \"response\"}} or {{\"text\"}}, got "
                f"keys {sorted(record)}"
            )
        if limit is not None and len(records) >= limit:
            break
    if not records:
        raise ValueError(f"{path} holds no records")
    return records


def encode_records(
    pipeline: Any, records: Sequence[Mapping[str, str | None]], *, mdm_canvas: int | None = None
) -> list[tuple[list[int], list[int], int] | None]:
    """(context ids, continuation ids, response tokens) per record in the checkpoint's training
    layout, or None where the record does not fit its max_length (or the MDM canvas)."""
    from retrofit.pipeline import Task
    from retrofit.prompt_layout import encode_text

    ids = pipeline.special_ids
    max_length = int(pipeline.model.config.max_length)
    plain = [i for i, r in enumerate(records) if r["prompt"] is not None]
    contexts: dict[int, list[int]] = {}
    if plain:
        encoded, _ = pipeline.encode([Task(prompt=records[i]["prompt"]) for i in plain])
        contexts = dict(zip(plain, encoded))
    encoded_records: list[tuple[list[int], list[int], int] | None] = []
    for index, record in enumerate(records):
        context = contexts.get(index, [] if ids.bos is None else [ids.bos])
        response = encode_text(pipeline.tokenizer, str(record["response"]))
        continuation = list(response)
        if pipeline.layout.append_eos and ids.eos is not None:
            continuation.append(ids.eos)
        if pipeline.kind == "mdm" and mdm_canvas is not None:
            if len(continuation) > mdm_canvas or ids.eos is None:
                encoded_records.append(None)
                continue
            continuation += [ids.eos] * (mdm_canvas - len(continuation))
        fits = len(context) + len(continuation) <= max_length and len(response) > 0
        encoded_records.append((context, continuation, len(response)) if fits else None)
    return encoded_records


def score_checkpoint(
    pipeline: Any,
    encoded: Sequence[tuple[list[int], list[int], int] | None],
    records: Sequence[Mapping[str, str | None]],
    *,
    mc_num: int,
    batch_size: int,
    seed: int,
    progress: bool = True,
) -> dict[str, Any]:
    """Bits per token / byte and the Monte Carlo interval of one checkpoint on the records
    ``encoded`` keeps (None entries are skipped and counted)."""
    import torch
    from tqdm.auto import tqdm

    from retrofit.likelihood import flexmdm_log_likelihood, mdm_log_likelihood

    kept = [i for i, item in enumerate(encoded) if item is not None]
    pairs = [(encoded[i][0], encoded[i][1]) for i in kept]  # type: ignore[index]
    model = pipeline.model
    common = {"mask_token_id": pipeline.special_ids.mask, "pad_token_id": pipeline.special_ids.pad,
              "mc_num": mc_num, "batch_size": batch_size, "seed": seed}  # fmt: skip
    started = time.perf_counter()
    with tqdm(total=len(pairs) * mc_num, desc=f"bpt {pipeline.kind}", disable=not progress) as bar:
        common["progress"] = bar.update
        with torch.no_grad():
            if pipeline.kind == "mdm":
                estimates = mdm_log_likelihood(model, pairs, **common)
            else:
                estimates = flexmdm_log_likelihood(
                    model, pairs, insertion=model.insertion_schedule,
                    unmasking=model.unmasking_schedule, **common,
                )  # fmt: skip
    tokens = sum(encoded[i][2] for i in kept)  # type: ignore[index]
    text_bytes = sum(len(str(records[i]["response"]).encode("utf-8")) for i in kept)
    nll = -sum(e.log_likelihood for e in estimates)
    stderr = math.sqrt(sum(e.stderr**2 for e in estimates))
    per_token = math.log(2.0) * max(tokens, 1)
    return {
        "kind": pipeline.kind,
        "records": len(kept),
        "skipped": len(encoded) - len(kept),
        "tokens": tokens,
        "nll_nats": nll,
        "bits_per_token": nll / per_token,
        "bits_per_token_interval": [
            (nll - Z_95 * stderr) / per_token, (nll + Z_95 * stderr) / per_token
        ],
        "bits_per_byte": nll / (math.log(2.0) * max(text_bytes, 1)),
        "mc_num": mc_num,
        "seconds": time.perf_counter() - started,
    }


def format_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """The markdown table of the results, one row per checkpoint."""
    lines = [
        "| checkpoint | kind | records | tokens | bits/token (bound) | 95% MC interval | bits/byte |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, result in results.items():
        low, high = result["bits_per_token_interval"]
        lines.append(
            f"| {name} | {result['kind']} | {result['records']} | {result['tokens']} | "
            f"{result['bits_per_token']:.3f} | [{low:.3f}, {high:.3f}] | "
            f"{result['bits_per_byte']:.3f} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``retrofit bpt``."""
    parser = argparse.ArgumentParser(
        prog="retrofit bpt",
        description="Bits per token (variational bound) of FlexMDM / MDM checkpoints on held-out "
        "JSONL data, side by side, with Monte Carlo intervals.",
    )
    parser.add_argument("--model", action="append", required=True,
                        help="checkpoint directory or Hub id (repeat to compare)")
    parser.add_argument("--data", type=Path, required=True,
                        help='JSONL of {"prompt", "response"} or {"text"} records')
    parser.add_argument("--limit", type=int, default=None, help="score the first N records")
    parser.add_argument("--mc-num", type=int, default=128, help="Monte Carlo samples per record")
    parser.add_argument("--batch-size", type=int, default=32, help="rows per forward pass")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mdm-canvas", type=int, default=None,
                        help="pad MDM continuations with EOS to this many tokens (its training "
                        "canvas, e.g. 64 for the demo); default: no padding")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def cli_main(argv: Sequence[str] | None = None) -> int:
    """Run ``retrofit bpt``; prints the table (and writes --output); returns the exit code."""
    args = build_parser().parse_args(list(argv or []))
    if args.mc_num < 2:
        raise ValueError("--mc-num must be >= 2 (the interval needs two samples)")
    from retrofit.pipeline import Pipeline

    records = _read_records(args.data, args.limit)
    results: dict[str, dict[str, Any]] = {}
    encoded_all = []
    pipelines = []
    for model in args.model:
        pipeline = Pipeline.from_pretrained(model, device=args.device, dtype=args.dtype)
        pipelines.append(pipeline)
        encoded_all.append(encode_records(pipeline, records, mdm_canvas=args.mdm_canvas))
    # Score only the records every checkpoint can score: the rows then compare the same text.
    common = [all(encoded[i] is not None for encoded in encoded_all) for i in range(len(records))]
    for model, pipeline, encoded in zip(args.model, pipelines, encoded_all):
        shared = [item if keep else None for item, keep in zip(encoded, common)]
        results[model] = score_checkpoint(
            pipeline, shared, records, mc_num=args.mc_num, batch_size=args.batch_size,
            seed=args.seed, progress=not args.no_progress,
        )  # fmt: skip
    table = format_table(results)
    print(table)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        payload = {"data": str(args.data), "records": len(records), "results": results,
                   "table": table}  # fmt: skip
        args.output.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli_main())
