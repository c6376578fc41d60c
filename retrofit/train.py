"""Train a FlexMDM (or the MDM baseline) from a recipe.

    accelerate launch [--config_file recipes/accelerate/zero2.yaml] -m retrofit.train RECIPE.yaml [key=value ...]
    retrofit train RECIPE.yaml [key=value ...]

The recipe reads top to bottom (torchtune style), as :class:`TrainingRecipe`'s methods:
``setup`` (run size for this many processes -> accelerator -> seed -> tokenizer -> model, a
backbone retrofitted from an adapter spec -> objective -> data -> AdamW over parameter groups +
warmup/half-cosine) -> ``resume`` -> for each optimizer step: ``train_step`` (read its global
batch, the objective noises it once, then for each of this rank's micro-batches: shard -> loss ->
backward; clip, step) -> ``log`` -> ``save_checkpoint`` -> ``finish`` (final save + summary + Hub
push). The components live in :mod:`retrofit.training`; this module re-exports the ones tests and
benchmarks use.

Data parallelism and noise. The global batch (``training.global_batch_size`` rows) is the recipe's
invariant; the accumulation is derived from the number of processes W (:mod:`retrofit.training.
run_size`). Every rank reads the same stream and builds the same global batch; the noise (FlexMDM
times and forward process, or MDM mask ratios) is drawn for it once, from a generator seeded by
``(seed, step)``; the noised batch is cut into ``accumulation x W`` micro-batches of
``micro_batch_size`` rows, micro-batch ``m * W + rank`` going to rank ``rank`` at accumulation
step ``m``, each trimmed to its longest x_t. Hence the rows, the noise and the micro-batches of a
step are the same on 1 or 16 processes, FlexMDM times are stratified over the global batch, and
resuming needs no RNG state for the noise. Reading (tokenising) the global batch on every rank costs
a little CPU time per step.

Checkpoints (every ``checkpoint.save_every`` steps) are written to ``output_dir/.tmp-checkpoint-N``
and renamed to ``output_dir/checkpoint-N`` once complete (a ``COMPLETE`` marker inside):
``model/`` (the adapter format, loadable with ``FlexMDM.from_pretrained``; tokenizer next to it),
``state/`` (accelerate ``save_state``: optimizer, scheduler, RNG states, DeepSpeed shards, and the
trainable weights in fp32) and ``trainer_state.json`` (step, tokens seen, data position).
``checkpoint.resume: latest`` continues from the newest complete one.

Hub push (main process only). With ``push_to_hub: true`` the token, its write access and the repo
``hub_repo_id`` are checked (the repo is created) at startup, before the model is built, so a
missing or read-only token fails in seconds; ``output_dir/final`` is pushed to ``main`` at the end
(a failure raises). ``hub_push_checkpoints: branch | commit`` also pushes each saved checkpoint's
``model/`` right after it is renamed into place, in a background thread (training goes on during
the upload; one upload at a time), to the branch ``step-NNNNNN`` or as a commit on ``main``; a
failed checkpoint push is reported loudly (stderr and a RuntimeWarning) and training continues.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from retrofit.checkpoint_names import (
    COMPLETE_MARKER,
    FINAL_DIR,
    METRICS_FILE,
    RECIPE_FILE,
    SUMMARY_FILE,
    TRAINABLE_WEIGHTS_FILE,
    TRAINER_STATE_FILE,
)
from retrofit.config import ConfigError, TrainConfig, to_dict
from retrofit.training.accelerator import (
    build_accelerator,
    configure_deepspeed,
    is_deepspeed,
    launched_world_size,
)
from retrofit.training.batches import GlobalBatchStream, build_data_stream
from retrofit.training.checkpointing import (
    CheckpointManager,
    find_latest_checkpoint,
    list_checkpoints,
    save_model,
)
from retrofit.training.hub_push import HubCheckpointPusher, check_hub_access, push_final
from retrofit.training.metrics import MetricsWriter
from retrofit.training.model import adapter_override_keys, build_model, build_tokenizer
from retrofit.training.objectives import (
    MicroBatchOutput,
    StepPlan,
    build_objective,
    flexmdm_micro_batch,
    mdm_micro_batch,
    noise_generator,
    step_denominator,
)
from retrofit.training.optim import build_lr_schedule, build_optimizer, lr_factor, warmup_steps_for
from retrofit.training.run_size import (
    count_records,
    load_resolved,
    resolve_run_size,
    resolved_config,
)

if TYPE_CHECKING:
    from retrofit.interpolant import NoisedBatch
    from retrofit.training.objectives import MDMNoisedBatch

__all__ = [
    "COMPLETE_MARKER",
    "METRICS_FILE",
    "SUMMARY_FILE",
    "TRAINABLE_WEIGHTS_FILE",
    "TRAINER_STATE_FILE",
    "GlobalBatchStream",
    "TrainResult",
    "TrainingRecipe",
    "adapter_override_keys",
    "build_data_stream",
    "build_model",
    "build_optimizer",
    "build_tokenizer",
    "cli_main",
    "find_latest_checkpoint",
    "flexmdm_micro_batch",
    "list_checkpoints",
    "lr_factor",
    "main",
    "mdm_micro_batch",
    "noise_generator",
    "print_config",
    "save_model",
    "step_denominator",
    "train",
    "warmup_steps_for",
]


@dataclass
class TrainResult:
    """What a finished (or stopped) run returns on every process.

    ``losses``: the global (all-rank mean) loss of every optimizer step run in this invocation;
    ``steps``: the optimizer step reached; ``tokens``: data tokens consumed since step 0 (sum of the
    batches' row lengths; for the MDM objective rows are EOS-filled to the batch width and those
    EOS count, as the loss trains on them).
    """

    output_dir: Path
    steps: int
    tokens: int
    losses: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    final_dir: Path | None = None
    resumed_from: Path | None = None


@dataclass
class StepRecord:
    """One optimizer step's numbers (losses: the all-rank mean of the step's whole batch)."""

    loss: float
    unmask_loss: float
    insert_loss: float
    grad_norm: float | None
    lr: float  # the base lr this update used
    tokens: int  # data tokens of the step's global batch


class TrainingRecipe:
    """One training run: ``setup() -> resume() -> train()`` (train: step -> log -> checkpoint,
    then finish). Every process of a launch runs the same recipe."""

    def __init__(self, cfg: TrainConfig, *, recipe_path: str | None = None) -> None:
        self.cfg = cfg
        self.recipe_path = recipe_path
        self.output_dir = Path(cfg.output_dir)
        self.started = time.perf_counter()
        self.step = 0
        self.tokens_seen = 0
        self.elapsed_before = 0.0
        self.resumed_from: Path | None = None
        self.losses: list[float] = []

    # -- setup ---------------------------------------------------------------------------------

    def setup(self) -> None:
        """Run size -> accelerator and seed -> tokenizer, model, objective -> data (and the step
        budget) -> optimizer (prepared)."""
        self._resolve_run_size(launched_world_size())
        self._setup_accelerator()
        self._setup_model()
        self._setup_data()
        self._setup_optimizer()

    def _resolve_run_size(self, world_size: int) -> None:
        """The accumulation that keeps the recipe's global batch on ``world_size`` processes."""
        try:
            self.size = resolve_run_size(self.cfg, world_size)
        except ConfigError as error:
            raise error.at(self.recipe_path) from None
        self.cfg = resolved_config(self.cfg, self.size)

    def _setup_accelerator(self) -> None:
        """The Accelerator, the Hub preflight (before anything is built), the seed, DeepSpeed's
        recipe-owned values, and the resolved recipe written next to the outputs."""
        from accelerate.utils import set_seed

        cfg = self.cfg
        self.accelerator = accelerator = build_accelerator(cfg)
        if accelerator.is_main_process and cfg.push_to_hub:
            check_hub_access(cfg)  # a missing / read-only token fails now, not after the run
        pushes = accelerator.is_main_process and cfg.push_to_hub and cfg.hub_push_checkpoints
        self.pusher = HubCheckpointPusher(cfg) if pushes else None
        set_seed(cfg.training.seed)
        self.deepspeed = is_deepspeed(accelerator)
        if self.deepspeed:
            configure_deepspeed(accelerator, cfg)
        if accelerator.num_processes != self.size.world_size:
            raise RuntimeError(
                f"the launcher's WORLD_SIZE={self.size.world_size} differs from the accelerator's "
                f"{accelerator.num_processes} processes; launch with accelerate launch / torchrun"
            )
        self.world_size = accelerator.num_processes
        self.rank = accelerator.process_index

    def _setup_model(self) -> None:
        """Tokenizer, model (its prompt layout recorded for generate / eval) and the objective."""
        from retrofit.data import PromptLayout
        from retrofit.tokenization import resolve_special_ids

        cfg = self.cfg
        self.tokenizer = build_tokenizer(cfg)
        self.model = model = build_model(cfg, self.tokenizer, self.accelerator)
        self.special_ids = resolve_special_ids(
            self.tokenizer, mask_token_id=model.config.mask_token_id
        )
        data_cfg = dataclasses.replace(cfg.data, objective=cfg.objective.name)
        model.config.prompt_layout = PromptLayout.from_data_config(data_cfg).to_dict()
        schedules = (model.insertion_schedule, model.unmasking_schedule)
        width = cfg.data.max_length if cfg.training.pad_to_max_length else None
        self.objective = build_objective(cfg, self.special_ids, schedules, width=width)

    def _setup_data(self) -> None:
        """The stream of global batches (every rank reads the same one); an ``epochs`` budget
        becomes optimizer steps; the resolved recipe is written next to the outputs."""
        cfg = self.cfg
        if cfg.data.max_length > self.model.config.max_length:
            raise ConfigError(
                f"data.max_length={cfg.data.max_length} exceeds the model's max_length="
                f"{self.model.config.max_length}: lower data.max_length or set "
                "model.adapter_overrides.max_length"
            )
        self.data = build_data_stream(
            cfg, self.tokenizer, self.size.global_batch_size, self.special_ids
        )
        if cfg.training.epochs is not None:
            records = count_records(cfg)
            self.size = resolve_run_size(cfg, self.world_size, num_records=records)
            self.cfg = cfg = resolved_config(cfg, self.size)
            self.objective.cfg = cfg
        if self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            # The resolved recipe (loadable with load_config) next to the outputs.
            recipe_yaml = yaml.safe_dump(to_dict(cfg), sort_keys=False)
            (self.output_dir / RECIPE_FILE).write_text(recipe_yaml)
        self.accelerator.wait_for_everyone()

    def _setup_optimizer(self) -> None:
        """AdamW + warmup/half-cosine, everything prepared by the Accelerator; the checkpointer."""
        cfg, accelerator = self.cfg, self.accelerator
        optimizer, group_names = build_optimizer(self.model, cfg)
        self.schedule = build_lr_schedule(cfg)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.schedule)
        accelerator.print(
            f"trainable parameters: {self.model.parameter_counts()}; optimizer groups: "
            f"{group_names}; " + "; ".join(self.size.describe())
        )
        self.model, self.optimizer, self.scheduler = accelerator.prepare(
            self.model, optimizer, scheduler
        )
        self.checkpoints = CheckpointManager(
            accelerator, self.model, self.tokenizer, output_dir=self.output_dir,
            keep_last=cfg.checkpoint.keep_last, pusher=self.pusher,
        )  # fmt: skip

    # -- resume --------------------------------------------------------------------------------

    def resume(self) -> None:
        """Continue from ``checkpoint.resume`` (``latest``: the newest complete checkpoint, if any):
        weights, optimizer, scheduler, RNG states and the data position; then open the metrics."""
        cfg, accelerator = self.cfg, self.accelerator
        if cfg.checkpoint.resume is not None:
            self.resumed_from = (
                find_latest_checkpoint(self.output_dir)
                if cfg.checkpoint.resume == "latest"
                else Path(cfg.checkpoint.resume)
            )
            if self.resumed_from is not None:
                state = self._restore(fallback=cfg.checkpoint.resume == "latest")
                self.step, self.tokens_seen = int(state["step"]), int(state["tokens"])
                self.elapsed_before = float(state.get("elapsed_s", 0.0))
                self.data.load_state_dict(state["data"])
                accelerator.print(f"resumed from {self.resumed_from} at step {self.step}")
            else:
                accelerator.print(
                    f"no complete checkpoint in {self.output_dir}: starting from step 0"
                )
        self.metrics = MetricsWriter(cfg, accelerator, resume_step=self.step)

    def _restore(self, *, fallback: bool) -> dict[str, Any]:
        """Restore ``self.resumed_from``; with ``fallback`` (``resume: latest``) a checkpoint that
        does not restore (a damaged optimizer, scheduler, RNG or weights file) is skipped, with a
        warning, for the previous complete one. Every rank agrees on the checkpoint it uses."""
        assert self.resumed_from is not None
        candidates = [self.resumed_from]
        if fallback:
            older = [c for c in list_checkpoints(self.output_dir) if c != self.resumed_from]
            candidates += older[::-1]
        for index, checkpoint in enumerate(candidates):
            error = None
            try:
                state = self.checkpoints.load(checkpoint)
            except Exception as failure:  # noqa: BLE001 - any damaged file: try the previous one
                error = failure
            if _all_ranks_ok(self.accelerator, error is None):
                self.resumed_from = checkpoint
                return state
            reason = f"{type(error).__name__}: {error}" if error else "another rank could not restore it"
            if index + 1 == len(candidates):
                raise RuntimeError(f"{checkpoint} cannot be restored ({reason}) and no earlier complete "
                                   "checkpoint restores: remove the damaged checkpoints or set "
                                   "checkpoint.resume=null to start over")
            warnings.warn(f"{checkpoint} cannot be restored ({reason}); resuming from the previous "
                          f"complete checkpoint {candidates[index + 1]} instead", stacklevel=2)
        raise AssertionError("unreachable")

    # -- the loop ------------------------------------------------------------------------------

    def train(self, *, stop_after_steps: int | None = None) -> TrainResult:
        """Optimizer steps until ``training.max_steps`` (or ``stop_after_steps`` in this
        invocation, as if the job were killed: no final save), each logged and checkpointed on
        schedule; then :meth:`finish`."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        progress = tqdm(
            total=cfg.training.max_steps,
            initial=self.step,
            desc="train",
            dynamic_ncols=True,
            disable=not (self.accelerator.is_main_process and cfg.logging.progress_bar),
        )
        self.window_tokens, self.window_start = 0, time.perf_counter()
        steps_this_run = 0
        self.model.train()
        while self.step < cfg.training.max_steps and (
            stop_after_steps is None or steps_this_run < stop_after_steps
        ):
            record = self.train_step()
            steps_this_run += 1
            progress.update(1)
            if self.step % cfg.logging.log_every == 0 or self.step == cfg.training.max_steps:
                self.log(record, progress)
            if self.step % cfg.checkpoint.save_every == 0:
                self.save_checkpoint(record.loss)
        progress.close()
        return self.finish()

    def train_step(self) -> StepRecord:
        """One optimizer step: read the global batch, noise it once, accumulate the gradients of
        this rank's micro-batches, clip, step."""
        cfg, accelerator = self.cfg, self.accelerator
        batch = next(self.data)  # (G, L): the same on every rank
        plan = self.objective.plan_step([batch], self.world_size)
        noised = self.objective.noise(batch, noise_generator(cfg.training.seed, self.step))
        parts = torch.zeros(3, dtype=torch.float64)  # loss, unmask, insert: sums of the shares
        for micro_step in range(plan.accumulation_steps):
            out = self._micro_step(noised, plan, micro_step)
            parts += torch.tensor(
                [out.loss.item(), out.unmask_loss, out.insert_loss], dtype=torch.float64
            )
        step_tokens = self.objective.count_tokens(
            batch, plan.accumulation_steps * self.world_size
        )  # the global batch: same on every rank
        max_norm = cfg.optimizer.max_grad_norm
        grad_norm = accelerator.clip_grad_norm_(
            self.model.parameters(), max_norm if max_norm is not None else float("inf")
        )
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += step_tokens
        self.window_tokens += step_tokens
        global_parts = accelerator.reduce(
            parts.to(accelerator.device, torch.float32), reduction="mean"
        ).cpu()
        loss, unmask, insert = (float(v) for v in global_parts)
        self.losses.append(loss)
        return StepRecord(
            loss=loss,
            unmask_loss=unmask,
            insert_loss=insert,
            grad_norm=float(grad_norm) if grad_norm is not None else None,
            lr=self.cfg.optimizer.lr * self.schedule(self.step - 1),
            tokens=step_tokens,
        )

    def _micro_step(
        self, noised: NoisedBatch | MDMNoisedBatch, plan: StepPlan, micro_step: int
    ) -> MicroBatchOutput:
        """This rank's micro-batch ``micro_step`` of the noised global batch (block
        ``micro_step * W + rank`` of ``accumulation * W``): loss, backward. Gradients are
        all-reduced (DDP) / the DeepSpeed boundary is reached on the last micro-batch only."""
        accelerator = self.accelerator
        last = micro_step == plan.accumulation_steps - 1
        accelerator.sync_gradients = last
        sync_context = contextlib.nullcontext() if last else accelerator.no_sync(self.model)
        index = micro_step * self.world_size + self.rank
        local = self.objective.shard(noised, index, plan.accumulation_steps * self.world_size)
        with sync_context:
            out = self.objective.loss(self.model, local.to(accelerator.device), plan)
            # The recipe owns accumulation scaling: out.loss is already this micro-batch's share
            # of the step's loss (FlexMDM: the step's normaliser; MDM: 1 / accumulation steps).
            if self.deepspeed:
                # DeepSpeed would divide by its gradient_accumulation_steps again.
                accelerator.backward(out.loss, scale_wrt_gas=False)
            else:
                out.loss.backward()
        return out

    def log(self, record: StepRecord, progress: Any) -> None:
        """One metrics record (metrics.jsonl + trackers) and the progress bar's numbers."""
        now = time.perf_counter()
        tokens_per_s = self.window_tokens / max(now - self.window_start, 1e-9)
        self.window_tokens, self.window_start = 0, now
        metrics = {
            "loss": record.loss,
            "unmask_loss": record.unmask_loss,
            "insert_loss": record.insert_loss,
            "lr": record.lr,
            "grad_norm": record.grad_norm,
            "tokens": self.tokens_seen,
            "tokens_per_s": tokens_per_s,
        }
        self.metrics.log(metrics, self.step)
        progress.set_postfix(
            loss=f"{record.loss:.4f}",
            unmask=f"{record.unmask_loss:.4f}",
            insert=f"{record.insert_loss:.4f}",
            tok_s=f"{tokens_per_s:.0f}",
            lr=f"{record.lr:.2e}",
        )

    def save_checkpoint(self, loss: float) -> Path:
        """``checkpoint-<step>`` with the trainer state (step, tokens, data position, time)."""
        trainer_state = {
            "step": self.step,
            "tokens": self.tokens_seen,
            "data": self.data.state_dict(),
            "elapsed_s": self.elapsed_s,
            "loss": loss,
        }
        return self.checkpoints.save(self.step, trainer_state)

    @property
    def elapsed_s(self) -> float:
        """Training time since step 0, across resumed invocations."""
        return self.elapsed_before + time.perf_counter() - self.started

    # -- finish --------------------------------------------------------------------------------

    def finish(self) -> TrainResult:
        """After the loop: a complete run saves ``final/``, the summary and pushes to the Hub."""
        if self.pusher is not None:
            self.pusher.wait()  # the last checkpoint's upload, before the final push
        self.accelerator.print(self.data.stats_summary)
        result = TrainResult(
            output_dir=self.output_dir,
            steps=self.step,
            tokens=self.tokens_seen,
            losses=self.losses,
            elapsed_s=self.elapsed_s,
            resumed_from=self.resumed_from,
        )
        if self.step >= self.cfg.training.max_steps:
            if self.cfg.checkpoint.save_final:
                result.final_dir = self.output_dir / FINAL_DIR
                save_model(self.model, self.accelerator, result.final_dir, self.tokenizer)
            if self.accelerator.is_main_process:
                self._write_summary(result)
                if self.cfg.push_to_hub and result.final_dir is not None:
                    push_final(self.cfg, result.final_dir, self.step)
        self.metrics.close()
        self.accelerator.wait_for_everyone()
        return result

    def _write_summary(self, result: TrainResult) -> None:
        """``train_summary.json`` (what the model card and the demo read)."""
        cfg = self.cfg
        summary = {
            "steps": result.steps,
            "tokens": result.tokens,
            "elapsed_s": result.elapsed_s,
            "tokens_per_s": result.tokens / max(result.elapsed_s, 1e-9),
            "objective": cfg.objective.name,
            "base_model": cfg.model.base,
            "world_size": self.world_size,
            "global_batch_size": self.size.global_batch_size,
            "gradient_accumulation_steps": self.size.gradient_accumulation_steps,
            "epochs": self.size.epochs,
            "records_per_epoch": self.size.num_records,
            "final_loss": self.losses[-1] if self.losses else None,
            "recipe": self.recipe_path,
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "data": self.data.stats_summary,
        }
        (self.output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))


def train(
    cfg: TrainConfig, *, stop_after_steps: int | None = None, recipe_path: str | None = None
) -> TrainResult:
    """Run (or resume) the training described by ``cfg``; returns a :class:`TrainResult`.

    ``stop_after_steps`` stops this invocation after that many optimizer steps, without the final
    save, as if the job had been killed right after them (time-limited jobs; resume tests).
    """
    recipe = TrainingRecipe(cfg, recipe_path=recipe_path)
    recipe.setup()
    recipe.resume()
    return recipe.train(stop_after_steps=stop_after_steps)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retrofit train",
        description="Train a FlexMDM (or the MDM baseline) from a recipe YAML. Launch with "
        "`accelerate launch [--config_file recipes/accelerate/X.yaml] -m retrofit.train RECIPE.yaml`.",
    )
    parser.add_argument("recipe", help="recipe YAML, e.g. recipes/tiny/flexmdm-gsm8k.yaml")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides parsed as YAML scalars, e.g. training.max_steps=10 optimizer.lr=3e-5",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the recipe resolved for --world-size processes (derived accumulation, number "
        "of optimizer steps) and exit",
    )
    parser.add_argument(
        "--world-size",
        type=int,
        default=None,
        metavar="N",
        help="with --print-config: the number of processes to resolve for (default: WORLD_SIZE, 1)",
    )
    parser.add_argument(
        "--count-records",
        action="store_true",
        help="with --print-config and an epochs budget on Hub data: read (download) the dataset to "
        "count its records (local data is always counted)",
    )
    return parser


def _is_local_data(cfg: TrainConfig) -> bool:
    """Whether the recipe's data are local files (cheap to count for --print-config)."""
    path = cfg.data.path
    return path is not None and (
        os.path.exists(os.path.expanduser(path)) or cfg.data.source not in ("auto", "hub")
    )


def print_config(cfg: TrainConfig, recipe: str, world_size: int, *, count: bool = False) -> int:
    """Print ``cfg`` resolved for ``world_size`` processes (header lines: the batch split and the
    optimizer steps); an ``epochs`` budget is converted when the data can be counted (local data,
    or ``count``). Returns the exit code (2: the global batch does not divide)."""
    try:
        size = resolve_run_size(cfg, world_size)
    except ConfigError as error:
        print(f"retrofit train: invalid recipe: {error.at(recipe)}", file=sys.stderr)
        return 2
    counted = cfg.training.epochs is not None and (count or _is_local_data(cfg))
    if counted:
        size = resolve_run_size(cfg, world_size, num_records=count_records(cfg))
    print(f"# {recipe} resolved for {world_size} process{'es' if world_size > 1 else ''}:")
    for line in size.describe():
        print(f"#   {line}")
    if cfg.training.epochs is not None and not counted:
        print("#   (Hub data: add --count-records to read the dataset and count them now)")
    print(yaml.safe_dump(to_dict(resolved_config(cfg, size)), sort_keys=False))
    return 0


def cli_main(argv: Sequence[str] | None = None) -> int:
    """``retrofit train RECIPE.yaml [key=value ...]``; returns the exit code."""
    args = _parser().parse_intermixed_args(list(sys.argv[1:] if argv is None else argv))
    world_size = args.world_size or launched_world_size()
    try:
        # Resolving for the world size checks that the global batch divides (file:line errors).
        cfg = load_resolved(args.recipe, args.overrides, world_size=world_size)
    except ConfigError as err:
        print(f"retrofit train: invalid recipe: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        return print_config(cfg, args.recipe, world_size, count=args.count_records)
    train(cfg, recipe_path=args.recipe)
    if launched_world_size() > 1:
        # torch + gloo abort at interpreter shutdown in a fraction of multi-process runs
        # ("terminate called without an active exception"): flush and leave without the teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def main() -> None:
    """Entry point of ``python -m retrofit.train`` / ``accelerate launch -m retrofit.train``."""
    sys.exit(cli_main())


if __name__ == "__main__":
    main()


def _all_ranks_ok(accelerator: Any, ok: bool) -> bool:
    """Whether ``ok`` holds on every process (one all-reduce; the value itself on one process)."""
    if accelerator.num_processes == 1:
        return ok
    flag = torch.tensor([1 if ok else 0], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() == accelerator.num_processes)
