"""Sizes, decoding grids and output paths of one demo run."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

__all__ = ["ARMS", "ARM_TITLES", "DemoPaths", "DemoSettings", "SeedPaths"]

ARMS = ("flexmdm", "mdm")
ARM_TITLES = {"flexmdm": "FlexMDM (retrofit)", "mdm": "MDM baseline"}


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of one demo run. ``full()`` is ``retrofit demo``, ``quick()`` the test-size run.

    Seeds: ``seed``, ``seed + 1``, ... (``num_seeds`` of them); each seed draws its own data,
    pretrains its own MDM, fine-tunes and evaluates both arms. Model: a LLaDA with
    ``d_model``, ``n_layers`` blocks of ``n_heads`` heads and an MLP of ``mlp_hidden_size``.
    Training: steps / micro-batch / lr of the pretraining and of each fine-tuning arm (the same
    budget for both); ``infill_share`` of the fine-tuning records are infilling tasks.
    Decoding: ``sampling_steps`` for every sampler; the grids each arm's settings are chosen from
    (``temperatures`` for both; the FlexMDM's insertion draws, the MDM's remasking rules and block
    counts); ``selection_samples`` / ``selection_infill`` held-out draws per setting (the selection
    split; the first seed's models choose, every seed is evaluated with that choice), then
    ``num_samples`` / ``num_infill`` on the evaluation split. ``workers``: seeds (and arms) trained
    and evaluated in parallel processes of one torch thread each (None: min(2, CPU cores)).
    """

    seed: int = 0
    num_seeds: int = 3
    num_train: int = 20_000
    num_heldout: int = 2_000
    infill_share: float = 0.25
    d_model: int = 64
    n_layers: int = 3
    n_heads: int = 4
    mlp_hidden_size: int = 192
    pretrain_steps: int = 300
    pretrain_batch_size: int = 32
    pretrain_lr: float = 3e-3
    finetune_steps: int = 800
    finetune_batch_size: int = 32
    finetune_lr: float = 1e-3
    sampling_steps: int = 64
    temperatures: tuple[float, ...] = (1.0, 0.5, 0.0)
    insertion_draws: tuple[str, ...] = ("binomial", "poisson")
    remasking: tuple[str, ...] = ("random", "low_confidence")
    block_counts: tuple[int, ...] = (1, 2)
    selection_samples: int = 96
    selection_infill: int = 48
    num_samples: int = 256
    num_infill: int = 128
    eval_batch_size: int = 128
    bayes_rows: int = 256
    progress: bool = True
    workers: int | None = None

    @classmethod
    def full(cls, seed: int = 0, num_seeds: int = 3) -> DemoSettings:
        """The default demo (``retrofit demo``)."""
        return cls(seed=seed, num_seeds=num_seeds)

    @classmethod
    def quick(cls, seed: int = 0, num_seeds: int = 2) -> DemoSettings:
        """A much smaller run of the same path (``retrofit demo --quick``; the end-to-end test)."""
        return cls(
            seed=seed, num_seeds=num_seeds, num_train=2_000, num_heldout=400, d_model=32,
            n_layers=2, n_heads=2, mlp_hidden_size=64, pretrain_steps=30, pretrain_batch_size=16,
            finetune_steps=20, finetune_batch_size=16, sampling_steps=16, temperatures=(1.0, 0.0),
            remasking=("random", "low_confidence"), block_counts=(1,), selection_samples=12,
            selection_infill=8, num_samples=24, num_infill=16, eval_batch_size=32, bayes_rows=32,
            progress=False, workers=1,
        )  # fmt: skip

    @property
    def seeds(self) -> list[int]:
        """The seeds of this run, in order."""
        return [self.seed + index for index in range(self.num_seeds)]

    @property
    def num_workers(self) -> int:
        """Parallel worker processes (``workers``, default min(2, CPU cores))."""
        return self.workers or max(1, min(2, os.cpu_count() or 1))

    def with_seeds(self, seed: int, num_seeds: int) -> DemoSettings:
        """A copy that runs ``num_seeds`` seeds from ``seed``."""
        return replace(self, seed=seed, num_seeds=num_seeds)


@dataclass(frozen=True)
class SeedPaths:
    """Where one seed keeps its data, arms, selection and evaluation (all under ``root``)."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def tokenizer(self) -> Path:
        return self.data / "tokenizer"

    def records(self, split: str) -> Path:
        """Training records: ``pretrain`` (whole strings) or ``train`` (strings + infilling)."""
        return self.data / f"{split}.jsonl"

    def tasks(self, split: str, benchmark: str) -> Path:
        """Task file of a benchmark (``unconditional`` / ``infill``) in a split (``select`` /
        ``eval``)."""
        return self.data / f"{split}_{benchmark}.jsonl"

    def arm(self, arm: str) -> Path:
        return self.root / arm

    def selection(self, arm: str) -> Path:
        return self.root / "select" / f"{arm}.json"

    @property
    def eval(self) -> Path:
        return self.root / "eval"


@dataclass(frozen=True)
class DemoPaths:
    """The output directory of a run: one ``seed-<S>/`` folder per seed, the pretraining cache,
    and the aggregated report."""

    root: Path

    def seed(self, seed: int) -> SeedPaths:
        return SeedPaths(self.root / f"seed-{seed}")

    @property
    def cache(self) -> Path:
        return self.root / "cache"
