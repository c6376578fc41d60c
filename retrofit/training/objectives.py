"""The training objectives, one class each, chosen once from ``objective.name``.

An objective turns one global micro-batch into this rank's share of the optimizer step's loss, in
three stages that read the same for every objective (:meth:`Objective.micro_batch`):

    noise the global batch  ->  keep this rank's rows (the noised batch shards itself)  ->  loss

* :class:`FlexMDMObjective` (spec sections 2-3): times stratified over the global batch, the
  insertion + unmasking forward process, ``flexmdm_loss`` divided by this rank's share of the step's
  normaliser (:func:`step_denominator`).
* :class:`MDMObjective` (the LLaDA SFT baseline): mask ratios and masks on the response, ``mdm_loss``
  (a mean over rows) divided by the number of accumulation micro-batches.

The noise of a global micro-batch comes from :func:`noise_generator` ``(seed, step, micro_step)``,
identical on every rank: a run on W processes computes the gradient of one process with a W-times
larger micro-batch, and a resumed run draws the same noise without any saved RNG state.
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


def noise_generator(seed: int, step: int, micro_step: int) -> torch.Generator:
    """The generator of the noise of one global micro-batch: identical on every rank, and a pure
    function of (seed, step, micro_step) so a resumed run draws the same noise."""
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
    """A batch noised by the MDM baseline's forward process (LLaDA SFT: one mask ratio per row,
    each response token masked with that probability). Rows are EOS-filled to the batch width."""

    input_ids: Tensor  # (B, L) long: the clean ids with masked positions set to the mask id
    is_mask: Tensor  # (B, L) bool: masked positions
    targets: Tensor  # (B, L) long: the clean ids
    response_mask: Tensor  # (B, L) bool: the positions the loss trains on
    lengths: Tensor  # (B,) long: row lengths (= L: the EOS filling is content)
    mask_ratio: Tensor  # (B,) float: each row's mask ratio

    def shard(
        self, rank: int, world_size: int, *, pad_token_id: int, width: int | None = None
    ) -> MDMNoisedBatch:
        """Rank ``rank``'s contiguous block of ``B / world_size`` rows, cut or padded to ``width``
        (default: its longest row); padding is ``pad_token_id`` / False."""
        per_rank = self.lengths.shape[0] // world_size
        rows = slice(rank * per_rank, (rank + 1) * per_rank)
        lengths = self.lengths[rows]
        width = int(lengths.max()) if width is None else width
        return MDMNoisedBatch(
            input_ids=fit_width(self.input_ids[rows], width, pad_token_id),
            is_mask=fit_width(self.is_mask[rows], width, False),
            targets=fit_width(self.targets[rows], width, pad_token_id),
            response_mask=fit_width(self.response_mask[rows], width, False),
            lengths=lengths,
            mask_ratio=self.mask_ratio[rows],
        )

    def to(self, device: torch.device | str) -> MDMNoisedBatch:
        """A copy with every tensor on ``device``."""
        return MDMNoisedBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


class Objective:
    """One training objective: ``plan_step`` once per optimizer step, then ``micro_batch`` for each
    of its micro-batches (noise -> shard -> loss). Subclasses implement the three stages."""

    name: ClassVar[str]

    def __init__(
        self,
        cfg: TrainConfig,
        special_ids: SpecialIds,
        schedules: tuple[Schedule, Schedule] | None = None,
    ) -> None:
        self.cfg = cfg
        self.special_ids = special_ids
        self.schedules = schedules

    def plan_step(self, batches: Sequence[Batch], world_size: int) -> StepPlan:
        """What the micro-batches of one optimizer step share (``batches``: all of them)."""
        return StepPlan(accumulation_steps=len(batches))

    def noise(self, batch: Batch, generator: torch.Generator) -> NoisedBatch | MDMNoisedBatch:
        """The forward process on the whole global micro-batch (identical on every rank)."""
        raise NotImplementedError

    def loss(
        self, model: torch.nn.Module, local: NoisedBatch | MDMNoisedBatch, plan: StepPlan
    ) -> MicroBatchOutput:
        """Forward this rank's noised rows (on the model's device) and return its loss share."""
        raise NotImplementedError

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
        pad_to: int | None = None,
    ) -> MicroBatchOutput:
        """This rank's share of one global micro-batch ``batch`` ((W B, L) tensors): noise it,
        keep rank ``rank``'s rows trimmed to their longest (or padded to ``pad_to``), loss."""
        noised = self.noise(batch, generator)
        local = noised.shard(rank, world_size, pad_token_id=self.special_ids.pad, width=pad_to)
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
            accumulation_steps=len(batches),
            denominator=step_denominator(batches, self.cfg, world_size),
        )

    def noise(self, batch: Batch, generator: torch.Generator) -> NoisedBatch:
        """Times (stratified over the global batch) -> forward process; (W B, L) tensors."""
        from retrofit.interpolant import forward_process, sample_times

        insertion, unmasking = self.schedules
        times = sample_times(
            batch.input_ids.shape[0],
            generator=generator,
            stratified=self.cfg.objective.stratified_times,
            eps=self.cfg.objective.time_eps,
        )  # (W B,)
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
        """Mask ratios and masks over the response of every row; (W B, L) tensors."""
        from retrofit.objective import mdm_forward_process

        noisy, is_masked, mask_ratio = mdm_forward_process(
            batch.input_ids,
            batch.response_mask,
            mask_token_id=self.special_ids.mask,
            generator=generator,
            eps=self.cfg.objective.time_eps,
        )
        return MDMNoisedBatch(
            input_ids=noisy,
            is_mask=is_masked,
            targets=batch.input_ids,
            response_mask=batch.response_mask,
            lengths=batch.lengths,
            mask_ratio=mask_ratio,
        )

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
) -> Objective:
    """The objective named by ``cfg.objective.name`` (``schedules``: insertion alpha, unmasking
    beta; the FlexMDM objective needs them)."""
    return OBJECTIVES[cfg.objective.name](cfg, special_ids, schedules)


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
    """One FlexMDM micro-batch (:meth:`FlexMDMObjective.micro_batch`) with the step's normaliser
    share ``denominator`` (:func:`step_denominator`) given directly: ``batch`` is the global
    micro-batch ((W B, L) tensors), ``generator`` its noise (:func:`noise_generator`)."""
    objective = FlexMDMObjective(cfg, special_ids, schedules)
    plan = StepPlan(accumulation_steps=1, denominator=denominator)
    return objective.micro_batch(
        model, batch, plan, generator=generator, rank=rank, world_size=world_size,
        device=device, pad_to=pad_to,
    )  # fmt: skip


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
    """One MDM-baseline micro-batch (:meth:`MDMObjective.micro_batch`): ``batch`` is the global
    micro-batch (rows EOS-filled to L), its loss divided by ``accumulation_steps``."""
    objective = MDMObjective(cfg, special_ids)
    plan = StepPlan(accumulation_steps=accumulation_steps)
    return objective.micro_batch(
        model, batch, plan, generator=generator, rank=rank, world_size=world_size,
        device=device, pad_to=pad_to,
    )  # fmt: skip
