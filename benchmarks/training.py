"""Training-step throughput: FlexMDM objective vs MDM objective, dynamic-length vs max-length batches.

    python benchmarks/training.py                 # CPU, ~1 minute
    python benchmarks/training.py --device cuda --d-model 1024 --layers 8 --max-length 1024

Both comparisons run the training step of ``retrofit.train`` (noise -> model -> loss -> backward ->
AdamW) on the same tiny LLaDA retrofitted with the tiny adapter spec (LoRA + new modules) and the same
variable-length data (token sequences with lengths uniform in [max_length / 16, max_length]):

1. **FlexMDM vs MDM objective**: tokens/s of each, and the share of a FlexMDM step spent in its
   forward process (times + insertion/unmasking sampling + compaction) and its loss (forward and
   backward of ``flexmdm_loss``). Goal: < 10 % of a step.
2. **Dynamic length vs padding to max length**: FlexMDM tokens/s when x_t is trimmed to the longest
   row of the batch (what the trainer does) vs padded to ``max_length`` (the research code's fixed
   1024 + 1 buffer). Goal: >= 1.5x. Printed as the last line.

Timings alternate between the variants round by round and report the median round, which keeps a
busy machine from favouring one variant. tokens/s counts clean data tokens (sum of x1 lengths).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from retrofit.adapter import FlexMDM
from retrofit.config import TrainConfig
from retrofit.data import Batch, Collator
from retrofit.interpolant import forward_process, sample_times
from retrofit.models import LLaDAModelLM, tiny_llada_config
from retrofit.objective import flexmdm_loss
from retrofit.tokenization import SpecialIds
from retrofit.train import (
    flexmdm_micro_batch,
    mdm_micro_batch,
    noise_generator,
    step_denominator,
)


def make_batches(
    args: argparse.Namespace, special: SpecialIds, objective: str
) -> list[tuple[Batch, int]]:
    """``--batches`` batches of random token sequences with lengths uniform in [L/16, L], each with
    its number of real tokens (the MDM collator EOS-fills rows, so its ``lengths`` count padding)."""
    generator = torch.Generator().manual_seed(0)
    low = max(2, args.max_length // 16)
    collator = Collator(
        special.pad, eos_token_id=special.eos, max_length=args.max_length, objective=objective
    )
    batches = []
    for _ in range(args.batches):
        lengths = torch.randint(low, args.max_length + 1, (args.batch_size,), generator=generator)
        examples = [
            {"input_ids": torch.randint(0, special.mask, (int(n),), generator=generator).tolist()}
            for n in lengths
        ]
        batches.append((collator(examples), int(lengths.sum())))
    return batches


def build(args: argparse.Namespace, kind: str) -> tuple[FlexMDM, torch.optim.Optimizer, SpecialIds]:
    """The tiny retrofitted model (same seed -> same weights for every variant) and its AdamW."""
    torch.manual_seed(0)
    config = tiny_llada_config(
        d_model=args.d_model,
        n_layers=args.layers,
        n_heads=args.heads,
        n_kv_heads=args.heads,
        mlp_hidden_size=4 * args.d_model,
        vocab_size=args.vocab,
        max_sequence_length=args.max_length + 8,
        mask_token_id=args.vocab - 2,
        eos_token_id=args.vocab - 1,
        pad_token_id=args.vocab - 1,
    )
    model = FlexMDM.retrofit(
        LLaDAModelLM(config),
        "tiny-llada",
        kind=kind,
        max_length=args.max_length,
        lora_r=args.lora_r,
    ).to(args.device)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    special = SpecialIds(
        mask=config.mask_token_id, pad=config.pad_token_id, eos=config.eos_token_id
    )
    return model, optimizer, special


def step_runner(args, kind: str, *, pad_to: int | None) -> Callable[[int], int]:
    """A function running one full training step on batch i; returns the clean tokens it used."""
    model, optimizer, special = build(args, kind)
    cfg = TrainConfig()
    cfg.objective.name = kind
    cfg.objective.normalizer = "tokens"
    batches = make_batches(args, special, kind)
    schedules = (model.insertion_schedule, model.unmasking_schedule)
    device = torch.device(args.device)

    def run(index: int) -> int:
        batch, real_tokens = batches[index % len(batches)]
        generator = noise_generator(0, index, 0)
        if kind == "flexmdm":
            out = flexmdm_micro_batch(
                model,
                batch,
                cfg,
                schedules=schedules,
                special_ids=special,
                generator=generator,
                rank=0,
                world_size=1,
                device=device,
                denominator=step_denominator([batch], cfg, 1),
                pad_to=pad_to,
            )
        else:
            out = mdm_micro_batch(
                model,
                batch,
                cfg,
                special_ids=special,
                generator=generator,
                rank=0,
                world_size=1,
                device=device,
                accumulation_steps=1,
                pad_to=pad_to,
            )
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return real_tokens

    return run


def objective_overhead_runner(args) -> Callable[[int], int]:
    """FlexMDM's own work in a step, without the model: forward process + loss forward/backward
    (on stand-in logits / gaps of the shapes the model would produce)."""
    model, _, special = build(args, "flexmdm")
    insertion, unmasking = model.insertion_schedule, model.unmasking_schedule
    batches = make_batches(args, special, "flexmdm")
    device = torch.device(args.device)

    def run(index: int) -> int:
        batch, real_tokens = batches[index % len(batches)]
        generator = noise_generator(0, index, 0)
        times = sample_times(batch.input_ids.shape[0], generator=generator, stratified=True)
        noised = forward_process(
            batch.input_ids,
            batch.lengths,
            batch.protected,
            times,
            insertion=insertion,
            unmasking=unmasking,
            mask_token_id=special.mask,
            pad_token_id=special.pad,
            generator=generator,
        ).to(device)
        num_masked = int(noised.is_mask.sum())
        logits = torch.randn(num_masked, args.vocab, device=device, requires_grad=True)  # (N, V)
        gaps = torch.rand(noised.gap_counts.shape, device=device, requires_grad=True)  # (B, L'+1)
        loss = flexmdm_loss(logits, gaps, noised, insertion=insertion, unmasking=unmasking)
        loss.loss.backward()
        return real_tokens

    return run


def measure(
    runners: dict[str, Callable[[int], int]], args, device: torch.device
) -> dict[str, float]:
    """Median tokens/s of each runner over ``--rounds`` rounds of ``--steps`` steps, interleaved."""
    for run in runners.values():  # warm-up (allocator, kernels)
        for index in range(2):
            run(index)
    per_round: dict[str, list[float]] = {name: [] for name in runners}
    for round_index in range(args.rounds):
        for name, run in runners.items():
            _sync(device)
            start = time.perf_counter()
            tokens = sum(run(round_index * args.steps + i) for i in range(args.steps))
            _sync(device)
            per_round[name].append(tokens / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in per_round.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="steps per round and variant")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads (default 1: for a tiny model thread synchronisation costs more than it saves)",
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    print(
        f"device {device}, d_model {args.d_model}, layers {args.layers}, vocab {args.vocab}, "
        f"batch {args.batch_size} x lengths U[{max(2, args.max_length // 16)}, {args.max_length}]"
    )

    speeds = measure(
        {
            "flexmdm": step_runner(args, "flexmdm", pad_to=None),
            "mdm": step_runner(args, "mdm", pad_to=None),
            "flexmdm_objective_only": objective_overhead_runner(args),
            "flexmdm_padded": step_runner(args, "flexmdm", pad_to=args.max_length),
        },
        args,
        device,
    )
    flex, mdm, padded = speeds["flexmdm"], speeds["mdm"], speeds["flexmdm_padded"]
    overhead = (
        flex / speeds["flexmdm_objective_only"]
    )  # (s per token of the objective) / (s per token of a step)
    print(f"FlexMDM step (dynamic length)          {flex:10.0f} tokens/s")
    print(f"MDM step (dynamic length)              {mdm:10.0f} tokens/s")
    print(f"FlexMDM step (padded to {args.max_length:<5d})          {padded:10.0f} tokens/s")
    print(
        f"FlexMDM / MDM tokens/s ratio: {flex / mdm:.2f}x (x_t is shorter than x1, so FlexMDM may be faster)"
    )
    print(f"FlexMDM forward process + loss share of a step: {100 * overhead:.1f}% (goal < 10%)")
    print(f"dynamic-length speedup over padding to max length: {flex / padded:.2f}x (goal >= 1.5x)")


if __name__ == "__main__":
    main()
