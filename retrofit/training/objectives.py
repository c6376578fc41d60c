"""The training objectives, one class each, chosen once from ``objective.name``.

An optimizer step reads one global batch (G rows, the same on every rank) and runs, for every
objective, the same stages:

    plan_step (the step's normaliser)  ->  noise the global batch once  ->  for each micro-batch of
    this rank: the noised batch shards itself (slice ``m * W + rank`` of ``accumulation * W``)
    ->  loss  ->  backward

* :class:`FlexMDMObjective` (spec sections 2-3): times stratified over the global batch, the
  insertion + unmasking forward process, ``flexmdm_loss`` divided by this rank's share of the step's
  normaliser (:func:`step_denominator`).
* :class:`MDMObjective` (the LLaDA SFT baseline): mask ratios and masks on the response, each
  micro-batch EOS-filled to its own longest row, ``mdm_loss`` (a mean over rows) divided by the
  number of accumulation micro-batches.

The noise of a step comes from :func:`noise_generator` ``(seed, step, 0)`` and is drawn on the whole
global batch, so it is identical on every rank and for every number of ranks: a run on W processes
computes the gradient of one process on the same global batch, and a resumed run draws the same
noise without any saved RNG state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from retrofit.config import TrainConfig
from retrofit.interpolant import NoisedBatch, fit_width

if TYPE_CHECKING:
    from retrofit.adapter import FlexMDM
    from retrofit.data import Batch
    from retrofit.schedules import Schedule
    from retrofit.tokenization import SpecialIds

__all__ = [
    "OBJECTIVES",
    "FlexMDMObjective",
    "MDMNoisedBatch",
    "MDMObjective",
    "MicroBatchOutput",
    "Objective",
    "StepPlan",
    "build_objective",
    "flexmdm_micro_batch",
    "mdm_micro_batch",
    "noise_generator",
    "step_denominator",
]


def noise_generator(seed: int, step: int, micro_step: int = 0) -> torch.Generator:
    """The generator of the noise of one global batch: identical on every rank, and a pure
    function of (seed, step, micro_step) so a resumed run draws the same noise. The trainer noises
    each step's global batch once (``micro_step = 0``)."""
    generator = torch.Generator()
    generator.manual_seed((seed * 1_000_003 + step * 1_009 + micro_step) % (2**63 - 1))
    return generator


@dataclass
class MicroBatchOutput:
    """Loss of one rank's share of a micro-batch and what it consumed.

    ``loss`` (and its parts) is this micro-batch's contribution to the optimizer step's loss: the
    contributions of all micro-batches of the step, averaged over the ranks, are the loss of the
    step's whole batch (see :func:`step_denominator`).
    """

    loss: Tensor  # () with grad
    unmask_loss: float
    insert_loss: float
    tokens: int  # tokens in this rank's rows (sum of their lengths)


@dataclass(frozen=True)
class StepPlan:
    """What every micro-batch of one optimizer step shares: the number of accumulation
    micro-batches and (FlexMDM) this rank's share of the step's normaliser."""

    accumulation_steps: int
    denominator: float | None = None


def step_denominator(batches: Sequence[Batch], cfg: TrainConfig, world_size: int) -> float:
    """This rank's share of the FlexMDM normaliser of one optimizer step.

    ``batches``: the step's global micro-batches (every rank holds all of them). The step's
    normaliser is computed on their concatenation (``"tokens"``: non-protected clean tokens, known
    before any noise is drawn; ``"fixed"``: rows * ``fixed_length``) and divided by ``world_size``,
    because DDP / DeepSpeed average the ranks' gradients. Every micro-batch of every rank divides
    its loss sum by this, so the step computes the gradient of one batch of all those rows.
    """
    from retrofit.objective import flexmdm_normalizer

    num_tokens = sum(int((b.lengths - b.protected.sum(dim=1)).sum()) for b in batches)
    num_rows = sum(b.input_ids.shape[0] for b in batches)
    total = flexmdm_normalizer(
        num_tokens,
        num_rows,
        normalizer=cfg.objective.normalizer,
        fixed_length=cfg.objective.fixed_length,
    )
    return total / world_size


@dataclass
class MDMNoisedBatch:
    """A global batch noised by the MDM baseline's forward process (LLaDA SFT: one mask ratio per
    row, each response token masked with that probability), every row EOS-filled to the batch
    width L; a micro-batch keeps that filling up to its own width (:meth:`shard`)."""

    input_ids: Tensor  # (G, L) long: the EOS-filled ids with masked positions set to the mask id
    is_mask: Tensor  # (G, L) bool: masked positions
    targets: Tensor  # (G, L) long: the EOS-filled clean ids
    response_mask: Tensor  # (G, L) bool: the positions the loss trains on (EOS filling included)
    lengths: Tensor  # (G,) long: true row lengths (without the EOS filling)
    mask_ratio: Tensor  # (G,) float: each row's mask ratio

    def shard(
        self, index: int, count: int, *, pad_token_id: int, width: int | None = None
    ) -> MDMNoisedBatch:
        """Slice ``index`` of ``count`` equal contiguous row blocks, its rows EOS-filled to
        ``width`` (default: the block's longest row, as LLaDA pads a batch); ``lengths`` = width."""
        per_slice = self.lengths.shape[0] // count
        rows = slice(index * per_slice, (index + 1) * per_slice)
        width = int(self.lengths[rows].max()) if width is None else width
        return MDMNoisedBatch(
            input_ids=fit_width(self.input_ids[rows], width, pad_token_id),
            is_mask=fit_width(self.is_mask[rows], width, False),
            targets=fit_width(self.targets[rows], width, pad_token_id),
            response_mask=fit_width(self.response_mask[rows], width, False),
            lengths=torch.full((per_slice,), width, dtype=torch.long),
            mask_ratio=self.mask_ratio[rows],
        )

    def to(self, device: torch.device | str) -> MDMNoisedBatch:
        """A copy with every tensor on ``device``."""
        return MDMNoisedBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


class Objective:
    """One training objective: ``plan_step`` and ``noise`` once per optimizer step on its global
    batch, then ``loss`` for each micro-batch the noised batch shards into. ``width`` (the recipe's
    ``pad_to_max_length``) pads every micro-batch to a fixed width instead of its longest row."""

    name: ClassVar[str]

    def __init__(
        self,
        cfg: TrainConfig,
        special_ids: SpecialIds,
        schedules: tuple[Schedule, Schedule] | None = None,
        *,
        width: int | None = None,
    ) -> None:
        self.cfg = cfg
        self.special_ids = special_ids
        self.schedules = schedules
        self.width = width

    def plan_step(self, batches: Sequence[Batch], world_size: int) -> StepPlan:
        """What the micro-batches of one optimizer step share (``batches``: the step's global
        batch, or its parts)."""
        return StepPlan(accumulation_steps=self.cfg.training.gradient_accumulation_steps or 1)

    def noise(self, batch: Batch, generator: torch.Generator) -> NoisedBatch | MDMNoisedBatch:
        """The forward process on the whole global batch (identical on every rank)."""
        raise NotImplementedError

    def loss(
        self, model: torch.nn.Module, local: NoisedBatch | MDMNoisedBatch, plan: StepPlan
    ) -> MicroBatchOutput:
        """Forward one noised micro-batch (on the model's device) and return its loss share."""
        raise NotImplementedError

    def shard(
        self, noised: NoisedBatch | MDMNoisedBatch, index: int, count: int
    ) -> NoisedBatch | MDMNoisedBatch:
        """Micro-batch ``index`` of ``count`` of a noised global batch (its own width)."""
        return noised.shard(index, count, pad_token_id=self.special_ids.pad, width=self.width)

    def count_tokens(self, batch: Batch, count: int) -> int:
        """Data tokens a global batch split into ``count`` micro-batches trains on: the rows'
        lengths (the MDM baseline adds the EOS filling of each micro-batch)."""
        return int(batch.lengths.sum())

    def micro_batch(
        self,
        model: FlexMDM | torch.nn.Module,
        batch: Batch,
        plan: StepPlan,
        *,
        generator: torch.Generator,
        rank: int,
        world_size: int,
        device: torch.device,
    ) -> MicroBatchOutput:
        """Rank ``rank``'s share of the global batch ``batch`` ((G, L) tensors) in one pass:
        noise it, keep block ``rank`` of ``world_size``, loss (tests, benchmarks)."""
        local = self.shard(self.noise(batch, generator), rank, world_size)
        out = self.loss(model, local.to(device), plan)
        per_rank = batch.lengths.shape[0] // world_size
        out.tokens = int(batch.lengths[rank * per_rank : (rank + 1) * per_rank].sum())
        return out


class FlexMDMObjective(Objective):
    """FlexMDM: insertion + unmasking (spec sections 2-3)."""

    name = "flexmdm"

    def plan_step(self, batches: Sequence[Batch], world_size: int) -> StepPlan:
        """The step's normaliser is computed once from all its micro-batches (clean data only)."""
        return StepPlan(
            accumulation_steps=self.cfg.training.gradient_accumulation_steps or 1,
            denominator=step_denominator(batches, self.cfg, world_size),
        )

    def times(self, batch: Batch, generator: torch.Generator) -> Tensor:
        """(G,) float: the time of every row of the global batch: with
        ``objective.stratified_times``, one stratum of [0, 1) per row, assigned by a seeded random
        permutation (t independent of the row's length and rank), balanced over aligned blocks of
        rows when G is a power of two (each micro-batch of 2^k rows spans [0, 1))."""
        from retrofit.interpolant import sample_times

        return sample_times(
            batch.input_ids.shape[0],
            generator=generator,
            stratified=self.cfg.objective.stratified_times,
            eps=self.cfg.objective.time_eps,
        )

    def noise(self, batch: Batch, generator: torch.Generator) -> NoisedBatch:
        """Times (:meth:`times`) -> forward process; (G, L') tensors."""
        from retrofit.interpolant import forward_process

        insertion, unmasking = self.schedules
        times = self.times(batch, generator)  # (G,)
        return forward_process(
            batch.input_ids,
            batch.lengths,
            batch.protected,
            times,
            insertion=insertion,
            unmasking=unmasking,
            mask_token_id=self.special_ids.mask,
            pad_token_id=self.special_ids.pad,
            generator=generator,
        )

    def loss(self, model: torch.nn.Module, local: NoisedBatch, plan: StepPlan) -> MicroBatchOutput:
        """model(x_t, lengths, t) -> flexmdm_loss / this rank's share of the step's normaliser."""
        from retrofit.objective import flexmdm_loss

        insertion, unmasking = self.schedules
        output = model(local.input_ids, local.lengths, local.t, logits_positions=local.is_mask)
        loss = flexmdm_loss(
            output.logits,
            output.gaps,
            local,
            insertion=insertion,
            unmasking=unmasking,
            denominator=plan.denominator,
        )
        return MicroBatchOutput(
            loss=loss.loss,
            unmask_loss=float(loss.unmask_loss),
            insert_loss=float(loss.insert_loss),
            tokens=0,
        )


class MDMObjective(Objective):
    """The MDM baseline (LLaDA SFT loss on the response)."""

    name = "mdm"

    def noise(self, batch: Batch, generator: torch.Generator) -> MDMNoisedBatch:
        """Rows EOS-filled to the batch width (or the fixed ``width``) -> mask ratios and masks
        over everything but the prompt; (G, L) tensors."""
        from retrofit.objective import mdm_forward_process

        eos = self.special_ids.eos if self.special_ids.eos is not None else self.special_ids.pad
        width = self.width or batch.input_ids.shape[1]
        positions = torch.arange(width)[None, :]  # (1, L)
        beyond = positions >= batch.lengths[:, None]  # (G, L): the EOS filling
        clean = torch.where(beyond, eos, fit_width(batch.input_ids, width, eos))  # (G, L)
        response = ~fit_width(batch.protected, width, False)  # (G, L)
        noisy, is_masked, mask_ratio = mdm_forward_process(
            clean,
            response,
            mask_token_id=self.special_ids.mask,
            generator=generator,
            eps=self.cfg.objective.time_eps,
        )
        return MDMNoisedBatch(
            input_ids=noisy,
            is_mask=is_masked,
            targets=clean,
            response_mask=response,
            lengths=batch.lengths,
            mask_ratio=mask_ratio,
        )

    def count_tokens(self, batch: Batch, count: int) -> int:
        """Every micro-batch trains on its rows EOS-filled to its width: rows x width each."""
        per_slice = batch.lengths.shape[0] // count
        widths = [
            self.width or int(batch.lengths[i * per_slice : (i + 1) * per_slice].max())
            for i in range(count)
        ]
        return per_slice * sum(widths)

    def loss(
        self, model: torch.nn.Module, local: MDMNoisedBatch, plan: StepPlan
    ) -> MicroBatchOutput:
        """model(noisy ids, lengths) -> mdm_loss / accumulation steps.

        The LLaDA loss is a mean over rows and every rank holds B rows of every micro-batch, so
        ``1 / accumulation_steps`` of this rank's mean is its exact share of the step's loss."""
        from retrofit.objective import mdm_loss

        output = model(local.input_ids, local.lengths, None, logits_positions=local.is_mask)
        loss = mdm_loss(
            output.logits, local.targets, local.is_mask, local.mask_ratio, local.response_mask
        )
        accumulation = plan.accumulation_steps
        return MicroBatchOutput(
            loss=loss.loss / accumulation,
            unmask_loss=float(loss.unmask_loss) / accumulation,
            insert_loss=float(loss.insert_loss) / accumulation,
            tokens=0,
        )


OBJECTIVES: dict[str, type[Objective]] = {"flexmdm": FlexMDMObjective, "mdm": MDMObjective}


def build_objective(
    cfg: TrainConfig,
    special_ids: SpecialIds,
    schedules: tuple[Schedule, Schedule] | None = None,
    *,
    width: int | None = None,
) -> Objective:
    """The objective named by ``cfg.objective.name`` (``schedules``: insertion alpha, unmasking
    beta; the FlexMDM objective needs them; ``width``: fixed micro-batch width or None)."""
    return OBJECTIVES[cfg.objective.name](cfg, special_ids, schedules, width=width)


def flexmdm_micro_batch(
    model: FlexMDM | torch.nn.Module,
    batch: Batch,
    cfg: TrainConfig,
    *,
    schedules: tuple[Schedule, Schedule],
    special_ids: SpecialIds,
    generator: torch.Generator,
    rank: int,
    world_size: int,
    device: torch.device,
    denominator: float,
    pad_to: int | None = None,
) -> MicroBatchOutput:
    """Rank ``rank``'s FlexMDM loss on the global batch ``batch`` ((G, L) tensors) noised with
    ``generator`` (:func:`noise_generator`), with the step's normaliser share ``denominator``
    (:func:`step_denominator`) given directly."""
    objective = FlexMDMObjective(cfg, special_ids, schedules, width=pad_to)
    plan = StepPlan(accumulation_steps=1, denominator=denominator)
    return objective.micro_batch(
        model, batch, plan, generator=generator, rank=rank, world_size=world_size, device=device
    )


def mdm_micro_batch(
    model: FlexMDM | torch.nn.Module,
    batch: Batch,
    cfg: TrainConfig,
    *,
    special_ids: SpecialIds,
    generator: torch.Generator,
    rank: int,
    world_size: int,
    device: torch.device,
    accumulation_steps: int,
    pad_to: int | None = None,
) -> MicroBatchOutput:
    """Rank ``rank``'s MDM-baseline loss on the global batch ``batch`` (true lengths; its rows
    are EOS-filled here), divided by ``accumulation_steps``."""
    objective = MDMObjective(cfg, special_ids, width=pad_to)
    plan = StepPlan(accumulation_steps=accumulation_steps)
    return objective.micro_batch(
        model, batch, plan, generator=generator, rank=rank, world_size=world_size, device=device
    )
