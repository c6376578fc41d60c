"""One prepared GPU check: training and sampling figures of a 1B LLaDA-shaped FlexMDM, in one JSON.

    python benchmarks/gpu_check.py                       # one H100 / H200, < 8 minutes
    python benchmarks/gpu_check.py --smoke               # the same code paths on CPU, tiny shape
    bash benchmarks/gpu_check.sh                         # the same, printing where the JSON is

Nothing is downloaded: the model is a randomly initialised LLaDA of the ``1b`` shape of
``benchmarks/sampling.py`` (d_model 2048, 22 blocks, MLP 5632, vocab 126,464), retrofitted with
the ``tiny-llada`` adapter spec without LoRA (every parameter trains); inputs are random token ids.
Measured, each with its peak GPU memory (``torch.cuda.max_memory_allocated``; null on CPU):

1. ``train``: one FlexMDM training step (forward process on random rows, forward with SDPA
   attention under bf16 autocast, FlexMDM loss, backward, AdamW) in this process: tokens/s of x_t
   and MFU = model FLOPs / s / the chip's bf16 dense peak (``--peak-tflops``, default from the
   device name: H100 SXM / H200 989, H100 PCIe 756, A100 312). Model FLOPs per step:
   6 x (block parameters x tokens + LM-head parameters x masked tokens) + 12 x layers x d_model
   x sum of squared row lengths (attention), no recomputation counted.
2. ``zero2`` / ``zero3``: the same step under DeepSpeed ZeRO-2 / ZeRO-3 on one GPU, through
   ``accelerate launch --config_file recipes/accelerate/zero{2,3}.yaml --num_processes 1
   --mixed_precision bf16`` (a worker process running this file with ``--worker``).

``--smoke`` runs every one of these on CPU with a tiny shape, in float32 (CPU bf16 matmuls are
emulated and ~50x slower; the code paths are the same), the two ZeRO workers side by side.
3. ``sampling_live_vs_fixed``: the FlexMDM sampler on the live length vs a fixed max_length
   buffer (``benchmarks/sampling.py``'s method: ghat steers answers to ~``--answer-tokens``).
4. ``fast_sampling``: the exact sampler vs the fast modes (confidence threshold 0.9, jumps of up
   to 1 expected insertion, prefix key/value reuse) on the same prompts, with a bias that makes the
   random model confident in one token (cost only: a random model has no quality to compare).

All figures go to ``--output`` (default ``gpu_check.json``); a summary is printed per section.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
SHAPES = {
    # backbone shape; training batch (rows x tokens of x1); sampling batch, steps, max length
    "1b": {"model": "1b", "batch": 8, "tokens": 2048, "train_steps": 10, "sample_batch": 8,
           "sample_steps": 128, "max_length": 512, "answer_tokens": 100},
    "tiny": {"model": "tiny", "batch": 2, "tokens": 32, "train_steps": 2, "sample_batch": 2,
             "sample_steps": 8, "max_length": 64, "answer_tokens": 12},
}
# bf16 dense peak TFLOP/s by device name fragment (first match wins).
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("A100", 312.0))


def _sibling(name: str) -> Any:
    """Another benchmark script of this folder, as a module."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


# ---------------------------------------------------------------------------------------------
# The training step
# ---------------------------------------------------------------------------------------------


def build_trainable(shape: dict[str, Any], device: torch.device) -> nn.Module:
    """The random FlexMDM of ``shape`` in float32 (autocast runs it in bf16), every parameter
    trainable."""
    model = _sibling("sampling").build_model(shape["model"], shape["tokens"], device, torch.float32)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model.train()


def noised_batch(model: nn.Module, shape: dict[str, Any], step: int, device: torch.device) -> Any:
    """A FlexMDM training batch: random clean rows of ``shape['tokens']`` ids, noised at random
    times by the model's own forward process (retrofit.interpolant)."""
    from retrofit.interpolant import forward_process, sample_times

    config = model.config
    generator = torch.Generator().manual_seed(step)
    rows, tokens = shape["batch"], shape["tokens"]
    vocab = min(config.mask_token_id, config.pad_token_id)
    x1 = torch.randint(0, vocab, (rows, tokens), generator=generator)
    lengths = torch.full((rows,), tokens, dtype=torch.long)
    batch = forward_process(
        x1, lengths, None, sample_times(rows, generator=generator), insertion=model.insertion_schedule,
        unmasking=model.unmasking_schedule, mask_token_id=config.mask_token_id,
        pad_token_id=config.pad_token_id, generator=generator,
    )
    return batch.to(device)


def flop_counts(model: nn.Module) -> dict[str, int]:
    """Parameter counts the FLOP model needs (taken before DeepSpeed partitions them)."""
    head = model.lm.get_output_embeddings().weight.numel()
    embedding = model.lm.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in model.parameters())
    config = model.lm.config
    return {"parameters": total, "blocks": total - head - embedding, "head": head,
            "layers": config.n_layers, "d_model": config.d_model}


def step_flops(counts: dict[str, int], batch: Any) -> float:
    """Model FLOPs of one forward + backward (see the module docstring)."""
    sequence = (batch.lengths + 1).double()  # (B,) x_t plus the slot position
    attention = 12.0 * counts["layers"] * counts["d_model"] * float((sequence**2).sum())
    matmuls = counts["blocks"] * float(sequence.sum()) + counts["head"] * float(batch.is_mask.sum())
    return 6.0 * matmuls + attention


def train_step(model: nn.Module, batch: Any, backward: Any, device: torch.device) -> Tensor:
    """Forward (bf16 autocast on GPU; float32 on CPU, where bf16 matmuls are emulated and slow),
    FlexMDM loss, backward; returns the loss."""
    from retrofit.objective import flexmdm_loss

    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        output = model(batch.input_ids, batch.lengths, batch.t, logits_positions=batch.is_mask)
    loss = flexmdm_loss(output.logits, output.gaps, batch, insertion=model_attr(model, "insertion_schedule"),
                        unmasking=model_attr(model, "unmasking_schedule")).loss
    backward(loss)
    return loss.detach()


def model_attr(model: nn.Module, name: str) -> Any:
    """An attribute of the model, through DeepSpeed's engine wrapper when there is one."""
    return getattr(getattr(model, "module", model), name)


def time_training(model: nn.Module, optimizer: Any, shape: dict[str, Any], device: torch.device,
                  backward: Any, peak_tflops: float | None, counts: dict[str, int]
                  ) -> dict[str, Any]:
    """Two warm-up steps, then ``train_steps`` timed ones; tokens/s, MFU, peak memory."""
    inner = getattr(model, "module", model)
    batches = [noised_batch(inner, shape, step, device) for step in range(2 + shape["train_steps"])]
    seconds, tokens, flops, losses = 0.0, 0, 0.0, []
    for index, batch in enumerate(batches):
        _synchronize(device)
        start = time.perf_counter()
        losses.append(float(train_step(model, batch, backward, device)))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _synchronize(device)
        if index >= 2:
            seconds += time.perf_counter() - start
            tokens += int((batch.lengths + 1).sum())
            flops += step_flops(counts, batch)
    achieved = flops / seconds / 1e12
    return {
        "steps": shape["train_steps"], "rows_per_step": shape["batch"],
        "x1_tokens_per_row": shape["tokens"], "seconds_per_step": seconds / shape["train_steps"],
        "tokens_per_s": tokens / seconds, "model_tflops_per_s": achieved,
        "mfu": achieved / peak_tflops if peak_tflops else None,
        "peak_memory_gib": _peak_memory_gib(device), "final_loss": losses[-1],
        "parameters": counts["parameters"],
    }


def measure_train(shape: dict[str, Any], device: torch.device, peak: float | None) -> dict[str, Any]:
    """The training step in this process (plain PyTorch, AdamW)."""
    _reset_memory(device)
    model = build_trainable(shape, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    result = time_training(model, optimizer, shape, device, lambda loss: loss.backward(), peak,
                           flop_counts(model))
    del model, optimizer
    _reset_memory(device)  # the ZeRO workers share the GPU
    return result


def run_worker(args: argparse.Namespace) -> int:
    """``--worker zero2|zero3``: the training step under DeepSpeed, as ``accelerate launch`` set
    it up (this process was started by it); writes its figures to ``--result``."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    handlers = []
    if not torch.cuda.is_available():
        import deepspeed.ops

        # CPU: gloo instead of NCCL, and no JIT build of DeepSpeed's shared-memory comm op.
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    accelerator = Accelerator(mixed_precision=args.precision, kwargs_handlers=handlers)
    shape = SHAPES[args.shape]
    ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
    ds_config.update({"train_micro_batch_size_per_gpu": shape["batch"],
                      "gradient_accumulation_steps": 1, "gradient_clipping": 1.0})
    device = accelerator.device
    _reset_memory(device)
    model = build_trainable(shape, device)
    counts = flop_counts(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model, optimizer = accelerator.prepare(model, optimizer)
    result = time_training(model, optimizer, shape, device, accelerator.backward, args.peak_tflops,
                           counts)
    result.update({"zero_stage": ds_config["zero_optimization"]["stage"],
                   "distributed_type": str(accelerator.distributed_type)})
    Path(args.result).write_text(json.dumps(result))
    sys.stdout.flush()
    os._exit(0)  # see docs: gloo may abort at interpreter exit after collectives


def start_zero(stage: int, args: argparse.Namespace, output: Path) -> dict[str, Any]:
    """Start the ZeRO-``stage`` worker through ``accelerate launch`` with the recipe's config."""
    result = output.with_name(f"{output.stem}.zero{stage}.json")
    result.unlink(missing_ok=True)
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "recipes" / "accelerate" / f"zero{stage}.yaml"),
        "--num_processes", "1", "--mixed_precision", args.precision,
        "--main_process_port", str(_free_port()),
        str(Path(__file__).resolve()), "--worker", f"zero{stage}", "--shape", args.shape,
        "--result", str(result), "--precision", args.precision,
    ]
    if args.peak_tflops:
        command += ["--peak-tflops", str(args.peak_tflops)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    return {"process": process, "result": result, "command": command,
            "started": time.perf_counter()}


def _free_port() -> int:
    """A TCP port nobody listens on now (each worker's rendezvous gets its own)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def finish_zero(run: dict[str, Any], timeout: int) -> dict[str, Any]:
    """Wait for a worker started by :func:`start_zero`; its figures, or the error and output."""
    try:
        output, _ = run["process"].communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        run["process"].kill()
        output, _ = run["process"].communicate()
    result = run["result"]
    if not result.is_file():
        return {"error": f"worker exited {run['process'].returncode}",
                "output_tail": (output or "")[-3000:]}
    figures = json.loads(result.read_text())
    result.unlink()
    figures["launch_seconds"] = time.perf_counter() - run["started"]
    figures["command"] = " ".join(run["command"][1:])
    return figures


def measure_zero(args: argparse.Namespace, output: Path) -> dict[str, dict[str, Any]]:
    """ZeRO-2 then ZeRO-3, one after the other on the GPU (together in ``--smoke``: only the
    code paths matter there, and the two worker start-ups dominate)."""
    if args.smoke:
        runs = {stage: start_zero(stage, args, output) for stage in (2, 3)}
        return {f"zero{stage}": finish_zero(run, args.worker_timeout) for stage, run in runs.items()}
    return {f"zero{stage}": finish_zero(start_zero(stage, args, output), args.worker_timeout)
            for stage in (2, 3)}


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


class ConfidentTarget(nn.Module):
    """The random FlexMDM with its gaps steered to ``answer_tokens`` (all expected insertions in
    the trailing slot, as benchmarks/sampling.py) and, when ``confident``, +30 on one token's logit
    (a random model is never confident: the fast modes' cost is measured as a trained model's)."""

    def __init__(self, model: nn.Module, prompt_lengths: dict[int, int], answer_tokens: int,
                 confident: bool):
        super().__init__()
        self.model, self.config = model, model.config
        self.prompt_lengths, self.answer_tokens, self.confident = prompt_lengths, answer_tokens, confident
        self.insertion_schedule = model.insertion_schedule
        self.unmasking_schedule = model.unmasking_schedule

    def forward(self, input_ids, lengths, t, logits_positions=None, prefix_cache=None):
        output = self.model(input_ids, lengths, t, logits_positions=logits_positions,
                            prefix_cache=prefix_cache)
        targets = torch.tensor([self.prompt_lengths[int(token)] + self.answer_tokens
                                for token in input_ids[:, 0].tolist()], device=input_ids.device)
        gaps = torch.zeros_like(output.gaps)  # (B, L + 1)
        gaps.scatter_(1, lengths[:, None], (targets - lengths).clamp_min(0).float()[:, None])
        logits = output.logits
        if self.confident:
            logits = logits.clone()
            logits[..., 0] += 30.0
        return SimpleNamespace(logits=logits, gaps=gaps)


def _prompts(shape: dict[str, Any], vocab: int) -> list[list[int]]:
    """Distinct-first-token prompts of growing lengths (the first token identifies the row)."""
    generator = torch.Generator().manual_seed(0)
    prompts = []
    for index in range(shape["sample_batch"]):
        length = max(2, shape["max_length"] // 32 + 6 * index)
        prompts.append([index + 1] + torch.randint(1, vocab - 2, (length - 1,), generator=generator).tolist())
    return prompts


def _timed_sampling(model: nn.Module, prompts: list[list[int]], device: torch.device,
                    **settings: Any) -> dict[str, Any]:
    from retrofit.sampling import flexmdm_generate

    _reset_memory(device)
    _synchronize(device)
    start = time.perf_counter()
    result = flexmdm_generate(model, prompts, seed=0, progress=False, **settings)
    _synchronize(device)
    seconds = time.perf_counter() - start
    tokens = int(result.lengths.sum())
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
            "forward_passes": result.num_forward_passes,
            "forwards_per_sample": float(result.steps.double().mean()),
            "peak_memory_gib": _peak_memory_gib(device), "sequences": result.sequences}


def measure_sampling(shape: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Live length vs fixed buffer, and exact vs fast modes, on the random model of ``shape``."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = _sibling("sampling").build_model(shape["model"], shape["max_length"], device, dtype)
    vocab = model.config.vocab_size
    prompts = _prompts(shape, vocab)
    lengths = {p[0]: len(p) for p in prompts}
    common = {"steps": shape["sample_steps"], "max_length": shape["max_length"]}
    steered = ConfidentTarget(model, lengths, shape["answer_tokens"], confident=False)
    with torch.inference_mode():
        _timed_sampling(steered, prompts[:1], device, steps=2, max_length=shape["max_length"])
        live = _timed_sampling(steered, prompts, device, **common)
        fixed = _timed_sampling(steered, prompts, device, fixed_buffer=True, **common)
        confident = ConfidentTarget(model, lengths, shape["answer_tokens"], confident=True)
        exact = _timed_sampling(confident, prompts, device, **common)
        fast = _timed_sampling(confident, prompts, device, unmask_threshold=0.9,
                               jump_insertions=1.0, prefix_cache=True, **common)
    outputs_identical = live.pop("sequences") == fixed.pop("sequences")
    for record in (exact, fast):
        record.pop("sequences")
    return {
        "sampling_live_vs_fixed": {
            "live": live, "fixed": fixed, "outputs_identical": outputs_identical,
            "speedup_tokens_per_s": live["tokens_per_s"] / fixed["tokens_per_s"],
        },
        "fast_sampling": {
            "exact": exact, "fast": fast,
            "fast_settings": {"unmask_threshold": 0.9, "jump_insertions": 1.0, "prefix_cache": True},
            "forward_pass_ratio": exact["forwards_per_sample"] / fast["forwards_per_sample"],
            "wall_time_ratio": exact["seconds"] / fast["seconds"],
        },
    }


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def _peak_tflops(device: torch.device, explicit: float | None) -> float | None:
    if explicit is not None or device.type != "cuda":
        return explicit
    name = torch.cuda.get_device_name(device)
    return next((peak for fragment, peak in PEAK_TFLOPS if fragment in name), None)


def _print_summary(figures: dict[str, Any]) -> None:
    def memory(record: dict[str, Any]) -> str:
        value = record.get("peak_memory_gib")
        return "n/a" if value is None else f"{value:.1f} GiB"

    for name in ("train", "zero2", "zero3"):
        record = figures[name]
        if "error" in record:
            print(f"{name:6s}: FAILED ({record['error']})\n{record['output_tail']}")
            continue
        mfu = "n/a" if record["mfu"] is None else f"{100 * record['mfu']:.1f} %"
        print(f"{name:6s}: {record['tokens_per_s']:10.0f} tokens/s, "
              f"{record['model_tflops_per_s']:8.2f} TFLOP/s, MFU {mfu}, "
              f"{record['seconds_per_step']:.3f} s/step, peak {memory(record)}")
    live = figures["sampling_live_vs_fixed"]
    print(f"sampling live vs fixed buffer: {live['speedup_tokens_per_s']:.2f}x tokens/s "
          f"(identical outputs: {live['outputs_identical']}; peak {memory(live['live'])} vs "
          f"{memory(live['fixed'])})")
    fast = figures["fast_sampling"]
    print(f"fast sampling: forward-pass ratio {fast['forward_pass_ratio']:.2f}x, wall-time ratio "
          f"{fast['wall_time_ratio']:.2f}x (peak {memory(fast['exact'])} vs {memory(fast['fast'])})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shape, same code paths")
    parser.add_argument("--output", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="bf16 dense peak of the chip (default: from its name)")
    parser.add_argument("--worker-timeout", type=int, default=300, help="seconds per ZeRO worker")
    parser.add_argument("--worker", choices=("zero2", "zero3"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--precision", choices=("bf16", "no"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.shape = args.shape or ("tiny" if args.smoke else "1b")
    # bf16 on the GPU; float32 in --smoke (CPU bf16 matmuls are emulated: same paths, no speed).
    args.precision = args.precision or ("no" if args.smoke else "bf16")
    if args.worker is not None:
        return run_worker(args)
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.smoke:
        parser.error("no CUDA device: run with --smoke (CPU, tiny shape) or on a GPU machine")
    args.peak_tflops = _peak_tflops(device, args.peak_tflops)
    shape = SHAPES[args.shape]
    started = time.perf_counter()
    figures: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "shape": {"name": args.shape, **shape},
        "peak_tflops_bf16": args.peak_tflops,
    }
    print(f"gpu_check: {figures['device']}, shape {args.shape}, peak {args.peak_tflops} TFLOP/s",
          flush=True)
    figures["train"] = measure_train(shape, device, args.peak_tflops)
    figures.update(measure_zero(args, args.output.resolve()))
    figures.update(measure_sampling(shape, device))
    figures["total_seconds"] = time.perf_counter() - started
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(figures, indent=2))
    _print_summary(figures)
    print(f"figures written to {args.output} ({figures['total_seconds']:.0f} s)")
    failed = [name for name in ("zero2", "zero3") if "error" in figures[name]]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
