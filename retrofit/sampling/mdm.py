"""The MDM baseline sampler (LLaDA's ``generate``) on batched prompts of different lengths.

``gen_length`` masks after each prompt, semi-autoregressive blocks of ``block_length``, ``steps``
split evenly across blocks, the number of tokens revealed per step as LLaDA's
``get_num_transfer_tokens``, low-confidence or random remasking, temperature via Gumbel noise in
float64, optional classifier-free guidance (unconditional input = prompt masked).

One step reads as its phases: ``logits (with guidance) -> propose tokens -> score -> commit``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .blocks import _select_top_k, num_transfer_tokens
from .config import MDMSamplingConfig, expose_config_keywords, resolve_config
from .plumbing import (
    TokenRows,
    _accepts_logits_positions,
    _as_rows,
    _batches,
    _call_model,
    _check_canvas_prompts,
    _check_prompt_count,
    _config_value,
    _model_device,
    _progress_bar,
    _row_generator,
    _stream_ids,
)
from .results import MDMSamplingResult, TraceStep

__all__ = ["mdm_generate"]


@expose_config_keywords(MDMSamplingConfig)
@torch.inference_mode()
def mdm_generate(
    model: Callable[..., Any],
    prompts: TokenRows,
    *,
    config: MDMSamplingConfig | Mapping[str, Any] | None = None,
    mask_token_id: int | None = None,
    pad_token_id: int | None = None,
    eos_token_id: int | None = None,
    seed: int = 0,
    row_ids: Sequence[int] | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    trace: Callable[[TraceStep], None] | None = None,
    **settings: Any,
) -> MDMSamplingResult:
    """LLaDA's semi-autoregressive sampler on batched prompts of different lengths.

    Each prompt gets ``gen_length`` masks after it (rows left-aligned, right-padded, explicit
    lengths). The masks form ``gen_length / block_length`` blocks unmasked left to right, each in
    ``steps / num_blocks`` steps revealing :func:`num_transfer_tokens` tokens per step: the most
    confident (``low_confidence``: probability of the chosen token) or random ones (``random``).
    ``temperature > 0`` picks tokens by Gumbel-max in float64 (LLaDA's ``add_gumbel_noise``);
    ``cfg_scale > 0`` mixes ``uncond + (cfg_scale + 1) * (cond - uncond)``, where the unconditional
    input has the prompt masked. The model is called as ``model(input_ids, lengths, None,
    logits_positions=...)`` with logits requested only at the current block's masks.

    config: the settings (:class:`MDMSamplingConfig` or a mapping of its fields, e.g. an eval
        spec's ``generation.mdm``); ``**settings``: its fields as keywords, laid over ``config``.
    mask_token_id, pad_token_id: default ``model.config``'s.
    eos_token_id: used only to report answer lengths (default ``model.config.eos_token_id``).
    seed, row_ids: row i draws from a generator seeded by (seed, row_ids[i]) (default: its index).
    Returns :class:`MDMSamplingResult` in the order of ``prompts``.
    """
    config = resolve_config(MDMSamplingConfig, config, settings, "mdm_generate")
    prompt_rows = _as_rows(prompts, "prompts")
    _check_prompt_count(len(prompt_rows))
    stream_ids = _stream_ids(row_ids, len(prompt_rows))
    options = _mdm_options(model, config, prompt_rows, mask_token_id, pad_token_id, eos_token_id,
                           seed, device, progress, trace)
    n_prompts = len(prompt_rows)
    sequences: list[list[int]] = [[] for _ in range(n_prompts)]
    full_sequences: list[list[int]] = [[] for _ in range(n_prompts)]
    forward_passes = 0
    batches = _batches([len(p) for p in prompt_rows], config.batch_size, config.sort_by_length)
    for batch_index, members in enumerate(batches):
        rows = [prompt_rows[i] for i in members]
        input_ids, calls = _mdm_batch(model, rows, members, [stream_ids[i] for i in members],
                                      batch_index, options)
        forward_passes += calls
        rows_out = input_ids.tolist()
        for row, row_id in enumerate(members):
            start = len(rows[row])
            sequences[row_id] = rows_out[row][start : start + config.gen_length]
            full_sequences[row_id] = rows_out[row][: start + config.gen_length]
    eos_id = options.eos_id
    answer_lengths = torch.tensor(
        [seq.index(eos_id) if eos_id is not None and eos_id in seq else len(seq) for seq in sequences],
        dtype=torch.long,
    )
    return MDMSamplingResult(sequences=sequences, full_sequences=full_sequences,
                             lengths=answer_lengths, steps=config.steps,
                             num_forward_passes=forward_passes)


@dataclass
class _MDMOptions:
    """The validated settings of one call, resolved against the model."""

    config: MDMSamplingConfig
    mask_id: int
    pad_id: int
    eos_id: int | None
    seed: int
    device: torch.device
    forbidden: Tensor
    pass_positions: bool
    progress: bool
    trace: Callable[[TraceStep], None] | None


def _mdm_options(
    model: Any, config: MDMSamplingConfig, prompt_rows: list[list[int]], mask_token_id: int | None,
    pad_token_id: int | None, eos_token_id: int | None, seed: int,
    device: torch.device | str | None, progress: bool, trace: Callable[[TraceStep], None] | None,
) -> _MDMOptions:
    """Resolve ids and device from the model; check the prompts against mask id and max length."""
    mask_id = _config_value(model, "mask_token_id", mask_token_id)
    pad_id = _config_value(model, "pad_token_id", pad_token_id)
    eos_id = _config_value(model, "eos_token_id", eos_token_id)
    _check_canvas_prompts(model, prompt_rows, mask_id, pad_id, config.gen_length)
    run_device = _model_device(model, device)
    forbid = config.forbid_token_ids
    forbidden = {int(mask_id)} | ({int(i) for i in forbid} if forbid else set())
    return _MDMOptions(
        config=config, mask_id=int(mask_id), pad_id=int(pad_id), eos_id=eos_id, seed=seed,
        device=run_device,
        forbidden=torch.tensor(sorted(forbidden), dtype=torch.long, device=run_device),
        pass_positions=_accepts_logits_positions(model), progress=progress, trace=trace,
    )


def _mdm_batch(model: Callable[..., Any], rows: list[list[int]], members: list[int],
               stream_ids: list[int], batch_index: int, options: _MDMOptions) -> tuple[Tensor, int]:
    """Sample one batch block by block; returns the final ids (B, L) and the forward passes."""
    config, device = options.config, options.device
    gen_length, mask_id = config.gen_length, options.mask_id
    block_length = config.block_length or gen_length
    steps_per_block = config.steps // config.num_blocks
    prompt_len = torch.tensor([len(r) for r in rows], dtype=torch.long, device=device)  # (B,)
    lengths = prompt_len + gen_length  # (B,)
    width = max(len(r) for r in rows) + gen_length
    input_ids = torch.full((len(rows), width), options.pad_id, dtype=torch.long)
    for row, prompt in enumerate(rows):
        input_ids[row, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        input_ids[row, len(prompt) : len(prompt) + gen_length] = mask_id
    input_ids = input_ids.to(device)  # (B, L)
    positions = torch.arange(width, device=device)  # (L,)
    is_prompt = positions[None, :] < prompt_len[:, None]  # (B, L)
    generators = [_row_generator(options.seed, stream, device) for stream in stream_ids]
    trace_state = (options.trace, batch_index, members, prompt_len, lengths, mask_id, gen_length)
    _mdm_trace(trace_state, 0, config.steps, input_ids)
    progress_bar = _progress_bar(config.steps, options.progress, "mdm")
    forward_passes = 0
    for block in range(config.num_blocks):
        block_start = prompt_len + block * block_length  # (B,)
        in_block = (positions[None, :] >= block_start[:, None]) & (
            positions[None, :] < (block_start + block_length)[:, None]
        )  # (B, L)
        block_masks = ((input_ids == mask_id) & in_block).sum(dim=1)  # (B,)
        schedule = num_transfer_tokens(block_masks, steps_per_block)  # (B, steps_per_block)
        for inner_step in range(steps_per_block):
            is_mask = (input_ids == mask_id) & in_block  # (B, L): current block's masks
            logits = _mdm_logits(model, input_ids, lengths, is_mask, is_prompt, options)
            forward_passes += 1
            per_row = is_mask.sum(dim=1).tolist()
            proposals = _mdm_propose(logits, per_row, generators, options)
            scores = _mdm_scores(logits, proposals, is_mask, per_row, generators, options)
            k = torch.minimum(schedule[:, inner_step], is_mask.sum(dim=1))
            selected = _select_top_k(scores, k) & is_mask  # (B, L)
            candidate_index = is_mask.flatten().long().cumsum(0) - 1
            input_ids = input_ids.masked_scatter(selected, proposals[candidate_index[selected.flatten()]])
            progress_bar.update(1)
            _mdm_trace(trace_state, block * steps_per_block + inner_step + 1, config.steps, input_ids)
    progress_bar.close()
    return input_ids, forward_passes


def _mdm_logits(model: Callable[..., Any], input_ids: Tensor, lengths: Tensor, is_mask: Tensor,
                is_prompt: Tensor, options: _MDMOptions) -> Tensor:
    """float64 logits (N, V) at the block's masks, guided when ``cfg_scale > 0``, forbidden
    tokens at -inf. input_ids, is_mask, is_prompt: (B, L); lengths: (B,)."""
    cfg_scale = options.config.cfg_scale
    if cfg_scale > 0:
        unconditional = input_ids.masked_fill(is_prompt, options.mask_id)
        logits, _ = _call_model(
            model, torch.cat([input_ids, unconditional]), torch.cat([lengths, lengths]), None,
            torch.cat([is_mask, is_mask]), options.pass_positions,
        )
        conditional, unconditional_logits = logits.double().chunk(2, dim=0)
        logits = unconditional_logits + (cfg_scale + 1) * (conditional - unconditional_logits)
    else:
        logits, _ = _call_model(model, input_ids, lengths, None, is_mask, options.pass_positions)
        logits = logits.double()  # (N, V)
    logits.index_fill_(-1, options.forbidden, float("-inf"))  # a float64 copy: in place
    return logits


def _mdm_propose(logits: Tensor, per_row: list[int], generators: list[torch.Generator],
                 options: _MDMOptions) -> Tensor:
    """The proposed token at each mask (N,): argmax, or Gumbel-max in float64 when
    ``temperature > 0`` (argmax(logits - T log(-log u)) equals LLaDA's
    argmax(exp(logits) / (-log u) ** T))."""
    temperature = options.config.temperature
    if temperature == 0:
        return logits.argmax(dim=-1)
    noise = torch.cat(
        [
            torch.rand((count, logits.shape[-1]), generator=generators[row], dtype=torch.float64,
                       device=options.device)
            for row, count in enumerate(per_row)
        ]
    )
    return (logits - temperature * torch.log(-torch.log(noise))).argmax(-1)


def _mdm_scores(logits: Tensor, proposals: Tensor, is_mask: Tensor, per_row: list[int],
                generators: list[torch.Generator], options: _MDMOptions) -> Tensor:
    """Remasking scores (B, L), -inf off the block's masks: the proposal's probability
    (``low_confidence``) or a uniform draw (``random``)."""
    if options.config.remasking == "low_confidence":
        # softmax(logits)[proposal] without materialising the (N, V) softmax.
        chosen = logits.gather(-1, proposals[:, None]).squeeze(-1)  # (N,)
        scores_flat = torch.exp(chosen - torch.logsumexp(logits, dim=-1))
    else:
        scores_flat = torch.cat(
            [
                torch.rand(count, generator=generators[row], dtype=torch.float64,
                           device=options.device)
                for row, count in enumerate(per_row)
            ]
        )
    scores = torch.full(is_mask.shape, float("-inf"), dtype=torch.float64, device=options.device)
    scores[is_mask] = scores_flat
    return scores


def _mdm_trace(state: tuple, step: int, steps: int, input_ids: Tensor) -> None:
    """Report one MDM step to the trace callback (if any). input_ids: (B, L)."""
    trace, batch_index, row_ids, prompt_len, lengths, mask_id, gen_length = state
    if trace is None:
        return
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (L,)
    generated = (positions[None, :] >= prompt_len[:, None]) & (
        positions[None, :] < lengths[:, None]
    )  # (B, L)
    n_mask = ((input_ids == mask_id) & generated).sum(dim=1).tolist()
    trace(
        TraceStep(
            batch_index=batch_index,
            step=step,
            t=step / steps,
            row_ids=list(row_ids),
            lengths=[gen_length] * len(n_mask),
            n_clean=[gen_length - m for m in n_mask],
            n_mask=n_mask,
            active=[step < steps] * len(n_mask),
        )
    )
