"""Sampling speed: live-length FlexMDM sampling vs the same sampler forced to a fixed full buffer;
and (``--exact-rates``) the sampler's length fidelity under exact rates, for both insertion draws.

    python benchmarks/sampling.py                      # tiny LLaDA-based FlexMDM (CPU)
    python benchmarks/sampling.py --size 1b            # ~1B LLaDA-shaped config (GPU)
    python benchmarks/sampling.py --exact-rates        # W1 / parity with exact rates, both draws

``--exact-rates`` drives the sampler with :class:`retrofit.sampling.oracle.LengthOracle`: the exact
Bayes-optimal expected gaps of the length distribution {4: .1, 16: .4, 32: .4, 64: .1} (no network,
content irrelevant). It prints, per insertion draw (``binomial``, ``poisson``) and step count, the
Wasserstein-1 distance of the generated lengths to that distribution and the fraction of odd
lengths (all data lengths are even), as mean and spread (min-max) over ``--seeds`` seeds of
``--samples`` samples each. A sampler exact in the limit of exact rates reaches W1 ~0 and no odd
lengths (up to the sampling noise of W1, ~0.2 at 4,000 samples).

A randomly initialised LLaDA backbone is retrofitted (adapter spec ``tiny-llada``) with
``max_length`` 512. Its insertion head is untrained, so the benchmark overrides only the *values*
of the predicted gaps (the full forward pass, head included, still runs): all expected insertions
go to the trailing slot, ``ghat = max(prompt_len + answer_tokens - length, 0)``, which grows every
answer to about ``--answer-tokens`` (100) tokens. Both runs use the same prompts, steps and seed.

Measured:
(a) generated tokens/s of the live-length sampler (forward on the batch's longest row + 1 slot)
    and of ``fixed_buffer=True`` (every forward on max_length + 1 positions, like the research
    sampler);
(b) the fraction of the live sampler's wall time spent outside the model forward (bookkeeping:
    Poisson draws, confidence, insertion scatter).
The live/fixed speedup is printed last.
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import torch
from torch import nn

from retrofit.adapter import FlexMDM
from retrofit.models import LLaDAModelLM, tiny_llada_config
from retrofit.sampling import flexmdm_generate
from retrofit.sampling.oracle import LengthOracle, length_w1

EXACT_RATE_LENGTHS = {4: 0.1, 16: 0.4, 32: 0.4, 64: 0.1}

SIZES = {
    # d_model, n_layers, n_heads, mlp_hidden, vocab
    "tiny": {"d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 4, "mlp_hidden_size": 128,
                 "vocab_size": 128},
    "small": {"d_model": 256, "n_layers": 4, "n_heads": 8, "n_kv_heads": 8, "mlp_hidden_size": 1024,
                  "vocab_size": 4096},
    "1b": {"d_model": 2048, "n_layers": 22, "n_heads": 16, "n_kv_heads": 16, "mlp_hidden_size": 5632,
               "vocab_size": 126464},
}


class TargetLengthGaps(nn.Module):
    """Runs the wrapped FlexMDM unchanged and replaces only its gap values (see module docstring).

    Rows are recognised by their first token (each benchmark prompt starts with a distinct id).
    Also accumulates the wall time spent inside the forward (synchronising CUDA around it).
    """

    def __init__(self, model: FlexMDM, prompt_lengths: dict[int, int], answer_tokens: int):
        super().__init__()
        self.model = model
        self.config = model.config
        self.prompt_lengths = prompt_lengths
        self.answer_tokens = answer_tokens
        self.forward_seconds = 0.0
        self.forward_calls = 0

    @property
    def insertion_schedule(self):
        return self.model.insertion_schedule

    @property
    def unmasking_schedule(self):
        return self.model.unmasking_schedule

    def forward(self, input_ids, lengths, t, logits_positions=None):
        synchronize(input_ids.device)
        start = time.perf_counter()
        output = self.model(input_ids, lengths, t, logits_positions=logits_positions)
        targets = torch.tensor(
            [self.prompt_lengths[int(token)] + self.answer_tokens for token in input_ids[:, 0].tolist()],
            device=input_ids.device,
        )  # (B,)
        remaining = (targets - lengths).clamp_min(0).float()  # (B,)
        gaps = torch.zeros_like(output.gaps)  # (B, L + 1)
        gaps.scatter_(1, lengths[:, None], remaining[:, None])  # everything in the trailing slot
        synchronize(input_ids.device)
        self.forward_seconds += time.perf_counter() - start
        self.forward_calls += 1
        return SimpleNamespace(logits=output.logits, gaps=gaps)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(size: str, max_length: int, device: torch.device, dtype: torch.dtype) -> FlexMDM:
    """A random LLaDA backbone of the given size, retrofitted with the tiny-llada adapter spec."""
    torch.manual_seed(0)
    shape = dict(SIZES[size])
    vocab = shape["vocab_size"]
    config = tiny_llada_config(
        **shape, embedding_size=vocab, max_sequence_length=max_length + 1,
        mask_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1,
    )
    backbone = LLaDAModelLM(config).to(dtype=dtype)
    model = FlexMDM.retrofit(backbone, "tiny-llada", max_length=max_length, lora=None)
    return model.to(device).eval()


def run(sampler_model, prompts, args, fixed_buffer: bool) -> tuple[float, int, list[list[int]]]:
    """One timed sampling run; returns (seconds, generated tokens, sequences)."""
    synchronize(args.device)
    start = time.perf_counter()
    result = flexmdm_generate(
        sampler_model,
        prompts,
        steps=args.steps,
        confidence="prob_diff",
        max_length=args.max_length,
        seed=args.seed,
        fixed_buffer=fixed_buffer,
        progress=False,
    )
    synchronize(args.device)
    seconds = time.perf_counter() - start
    return seconds, int(result.lengths.sum()), result.sequences


def exact_rates(args: argparse.Namespace) -> int:
    """Length fidelity with exact rates: W1 and odd-length fraction per draw and step count."""
    print(f"exact Bayes rates of lengths {EXACT_RATE_LENGTHS}: {args.samples} samples x "
          f"{args.seeds} seeds per row (mean [min, max] over seeds)")
    print(f"{'draw':9s} {'steps':>5s}  {'W1':>20s}  {'odd lengths %':>22s}  {'mean length':>11s}  "
          f"{'s/seed':>6s}")
    for draw in ("binomial", "poisson"):
        for steps in args.exact_steps:
            w1s, odds, means, seconds = [], [], [], []
            for seed in range(args.seeds):
                start = time.perf_counter()
                result = flexmdm_generate(
                    LengthOracle(EXACT_RATE_LENGTHS), [[0]] * args.samples, steps=steps,
                    seed=seed, insertion_draw=draw, batch_size=1000, progress=False,
                )
                seconds.append(time.perf_counter() - start)
                lengths = result.lengths
                w1s.append(length_w1(lengths, EXACT_RATE_LENGTHS))
                odds.append(100 * float((lengths % 2 == 1).double().mean()))
                means.append(float(lengths.double().mean()))
            print(f"{draw:9s} {steps:5d}  {_spread(w1s, 2):>20s}  {_spread(odds, 1):>22s}  "
                  f"{sum(means) / len(means):11.2f}  {sum(seconds) / len(seconds):6.1f}")
    return 0


def _spread(values: list[float], digits: int) -> str:
    """``mean [min, max]`` of a list of measurements."""
    mean = sum(values) / len(values)
    return f"{mean:.{digits}f} [{min(values):.{digits}f}, {max(values):.{digits}f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default=None,
                        help="model size (default: 1b on GPU, tiny on CPU)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--answer-tokens", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per mode (best kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--exact-rates", action="store_true",
                        help="length fidelity under exact rates (both insertion draws) instead")
    parser.add_argument("--samples", type=int, default=4000, help="--exact-rates: samples per seed")
    parser.add_argument("--seeds", type=int, default=3, help="--exact-rates: seeds")
    parser.add_argument("--exact-steps", type=int, nargs="+", default=[64, 256],
                        help="--exact-rates: step counts")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.exact_rates:
        return exact_rates(args)
    args.device = torch.device(args.device)
    size = args.size or ("1b" if args.device.type == "cuda" else "tiny")
    dtype = torch.bfloat16 if args.device.type == "cuda" else torch.float32
    model = build_model(size, args.max_length, args.device, dtype)
    vocab = SIZES[size]["vocab_size"]
    generator = torch.Generator().manual_seed(args.seed)
    prompts = []
    for index in range(args.batch_size):
        length = 16 + 6 * index  # 16 .. 58 tokens
        body = torch.randint(0, vocab - 2, (length - 1,), generator=generator).tolist()
        prompts.append([index] + body)  # distinct first token identifies the row
    wrapped = TargetLengthGaps(model, {p[0]: len(p) for p in prompts}, args.answer_tokens)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"device {args.device}, size {size} ({parameters / 1e6:.1f} M parameters, {dtype}), "
          f"batch {args.batch_size}, steps {args.steps}, max_length {args.max_length}, "
          f"target answer ~{args.answer_tokens} tokens")

    run(wrapped, prompts[:2], argparse.Namespace(**{**vars(args), "steps": 4}), False)  # warm-up
    best = {}
    for fixed in (False, True):
        times = []
        for _ in range(args.repeats):
            wrapped.forward_seconds, wrapped.forward_calls = 0.0, 0
            seconds, tokens, sequences = run(wrapped, prompts, args, fixed)
            times.append((seconds, wrapped.forward_seconds, wrapped.forward_calls))
        seconds, forward_seconds, calls = min(times)
        best[fixed] = (seconds, forward_seconds, calls, tokens, sequences)
        name = "fixed buffer" if fixed else "live length "
        print(f"{name}: {seconds:7.2f} s, {calls} forwards, {tokens} tokens generated "
              f"({tokens / args.batch_size:.0f} per answer), {tokens / seconds:8.1f} tokens/s, "
              f"outside forward {1 - forward_seconds / seconds:6.1%}")
    live, fixed = best[False], best[True]
    identical = live[4] == fixed[4]
    print(f"outputs identical (live vs fixed, same seed): {identical}")
    print(f"fraction of step time outside the forward (live): {1 - live[1] / live[0]:.1%} "
          f"(fixed: {1 - fixed[1] / fixed[0]:.1%})")
    speedup = (live[3] / live[0]) / (fixed[3] / fixed[0])
    print(f"live/fixed tokens/s speedup: {speedup:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
