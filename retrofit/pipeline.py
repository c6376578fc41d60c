"""The inference pipeline: checkpoint -> tokenizer -> prompt layout -> encode -> sampler -> stop -> text.

One object owns every inference step, so ``retrofit generate``, the evaluation runner, the demo,
lm-eval and the model card's usage snippet prompt and decode a checkpoint the same way::

    from retrofit.pipeline import Pipeline, Task

    pipe = Pipeline.from_pretrained("runs/gsm8k/final")          # local directory or Hub id
    answers = pipe.generate([Task(prompt="What is 12 * 7?")], {"steps": 256})
    print(answers[0].text, answers[0].forward_passes, answers[0].seconds)

- **tokenizer**: the checkpoint's own (saved next to it), else the recorded base model's; an
  explicit ``tokenizer=`` overrides both (:func:`load_tokenizer`).
- **special ids**: the ones recorded at retrofit time (:class:`retrofit.special_ids.SpecialIds`);
  a first-format checkpoint, which did not record bos / stop ids, gets them from its tokenizer.
- **prompt layout**: the one the checkpoint was trained with (``retrofit_config.json``'s
  ``prompt_layout``, :class:`retrofit.prompt_layout.PromptLayout`); ``layout_overrides`` changes
  single fields (``chat_template``, ``infill_markers``) on purpose.
- **sampler**: by the checkpoint's kind, FlexMDM (insert + unmask; infilling grows the middle
  between prefix and suffix) or the MDM baseline (LLaDA's sampler after the prompt, the PSM
  prompt for infilling; ``sampler: dream`` in its settings selects Dream's own). Every task draws from its own random stream (``Task.stream_id``), so an
  answer depends on neither the batch nor its position in it.
- **stop and decode**: an answer ends at the first stop id (EOS or end of turn, for both kinds)
  and is decoded with special tokens skipped.

Every answer carries its cost: the forward passes it took part in and its share of the wall time.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from retrofit.adapter import FlexMDM
from retrofit.adapter.checkpoint import TOKENIZER_FILES, resolve_checkpoint_dir
from retrofit.prompt_layout import PromptLayout, encode_generation_inputs, encode_text
from retrofit.sampling import flexmdm_generate, mdm_generate
from retrofit.sampling.dream import dream_generate
from retrofit.special_ids import SpecialIds, cut_at_stop

__all__ = ["LONG_PROMPT_POLICIES", "Answer", "Pipeline", "Task", "load_tokenizer"]

# The MDM baseline's samplers (``sampler:`` in the MDM settings): LLaDA's semi-autoregressive one
# (the default, for both families) or Dream's own ``diffusion_generate`` (with its keywords:
# ``alg``, ``eps``, ``top_p``, ...).
MDM_SAMPLERS = {"llada": mdm_generate, "dream": dream_generate}
# What to do with a prompt that leaves no room for an answer within the model's max_length.
LONG_PROMPT_POLICIES = ("error", "skip", "truncate-left")


@dataclass(frozen=True)
class Task:
    """One inference request.

    prompt: the user message; with ``prefix``/``suffix`` (infilling, both given) the optional
    instruction. stream_id: the random stream of this sample (default: its index in the call).
    answer_prefix: text that opens the answer as part of the prompt (as the model was trained,
    e.g. the research GSM8K template's ``<reasoning>``); not part of the returned answer.
    """

    prompt: str | None = None
    prefix: str | None = None
    suffix: str | None = None
    stream_id: int | None = None
    answer_prefix: str = ""

    @property
    def infill(self) -> bool:
        """Whether the task fills the hole between ``prefix`` and ``suffix``."""
        return self.prefix is not None


@dataclass
class Answer:
    """A generated answer (infilling: the middle) and what it cost.

    token_ids: the answer's ids up to its first stop id. forward_passes: model calls this sample
    took part in. seconds: its share of its batch's wall time. truncated: the FlexMDM wanted more
    tokens than ``max_length`` allowed (always False for the MDM). skipped: why the task was not
    generated (``"prompt_too_long"`` under ``on_long_prompt="skip"``), else None.
    """

    text: str
    token_ids: list[int]
    forward_passes: int
    seconds: float
    truncated: bool = False
    skipped: str | None = None

    @property
    def num_tokens(self) -> int:
        """Answer length in tokens."""
        return len(self.token_ids)


def load_tokenizer(
    model_id: str | Path,
    config: Any,
    *,
    revision: str | None = None,
    tokenizer: str | Path | None = None,
    base_model: str | None = None,
) -> Any:
    """The tokenizer of a checkpoint: ``tokenizer`` if given, else the one saved in the checkpoint
    directory, else the recorded base model's (``base_model`` overrides the recorded one)."""
    from transformers import AutoTokenizer

    if tokenizer is not None:
        return AutoTokenizer.from_pretrained(str(tokenizer))
    directory = resolve_checkpoint_dir(model_id, revision)
    if any((directory / name).is_file() for name in TOKENIZER_FILES):
        return AutoTokenizer.from_pretrained(str(directory))
    base = base_model or config.base_model
    if base is None:
        raise ValueError(f"{model_id} holds no tokenizer and records no base model: pass --tokenizer")
    base_revision = None if base_model else config.base_revision
    try:
        return AutoTokenizer.from_pretrained(str(base), revision=base_revision)
    except Exception as error:
        raise ValueError(
            f"could not load the tokenizer of base model {base!r} (revision {base_revision!r}): "
            f"{error}; pass --tokenizer"
        ) from error


def default_device_and_dtype(device: str | None, dtype: str) -> tuple[str, str]:
    """``device`` (default cuda when available) and ``dtype`` ("auto": bfloat16 on GPU, float32 on
    CPU)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype == "auto":
        dtype = "bfloat16" if str(device).startswith("cuda") else "float32"
    return device, dtype


class Pipeline:
    """A loaded checkpoint ready to answer :class:`Task` s (see the module docstring)."""

    def __init__(
        self,
        model: FlexMDM,
        tokenizer: Any,
        *,
        layout: PromptLayout | None = None,
        special_ids: SpecialIds | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.kind = model.kind
        self.layout = layout or PromptLayout.from_dict(model.config.prompt_layout)
        self.special_ids = special_ids or SpecialIds.from_legacy_config(model.config, tokenizer)

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path,
        *,
        revision: str | None = None,
        base_model: str | None = None,
        tokenizer: str | Path | None = None,
        device: str | None = None,
        dtype: str = "auto",
        layout_overrides: Mapping[str, Any] | None = None,
    ) -> Pipeline:
        """Load a checkpoint (local directory or Hub id) and its tokenizer; ``dtype`` "auto" is
        bfloat16 on GPU and float32 on CPU; ``layout_overrides`` (None values ignored) change
        fields of the recorded prompt layout."""
        device, dtype = default_device_and_dtype(device, dtype)
        loaded = FlexMDM.from_pretrained(
            model, revision=revision, base_model=base_model, dtype=getattr(torch, dtype),
            device=device,
        )  # fmt: skip
        loaded.eval()
        loaded_tokenizer = load_tokenizer(
            model, loaded.config, revision=revision, tokenizer=tokenizer, base_model=base_model
        )
        layout = PromptLayout.from_dict(loaded.config.prompt_layout, **dict(layout_overrides or {}))
        return cls(loaded, loaded_tokenizer, layout=layout)

    # -- encode / decode --------------------------------------------------------------------------

    def encode(self, tasks: Sequence[Task]) -> tuple[list[list[int]], list[list[int]] | None]:
        """Sampler inputs in the training layout: prompts, and the infilling suffixes the FlexMDM
        sampler inserts before (None for plain prompts and for the MDM baseline)."""
        return encode_generation_inputs(
            self.tokenizer,
            [(task.prompt, task.prefix if task.infill else None, task.suffix) for task in tasks],
            objective=self.kind, layout=self.layout, eos_token_id=self.special_ids.eos,
            mask_token_id=self.special_ids.mask, answer_prefixes=[task.answer_prefix for task in tasks],
        )  # fmt: skip

    def decode(self, ids: Sequence[int]) -> str:
        """Text of answer ids (special tokens skipped)."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def count_tokens(self, text: str) -> int:
        """Length of ``text`` in this checkpoint's tokens (no special tokens added)."""
        return len(encode_text(self.tokenizer, text))

    # -- generate ---------------------------------------------------------------------------------

    def prompt_limit(self, settings: Mapping[str, Any]) -> int:
        """The most tokens a prompt (infilling: prefix + suffix) may have under ``settings``:
        FlexMDM ``max_length`` (default the model's); MDM the model's max_length minus the
        ``gen_length`` canvas (default 256)."""
        model_max = int(self.model.config.max_length)
        if self.kind == "mdm":
            return model_max - int(settings.get("gen_length") or 256)
        return int(settings.get("max_length") or model_max)

    def _fit(self, prompts: list[list[int]], suffixes: list[list[int]] | None, limit: int,
             policy: str) -> list[str | None]:
        """Apply ``policy`` to over-long prompts in place; returns each task's skip reason."""
        if policy not in LONG_PROMPT_POLICIES:
            raise ValueError(f"on_long_prompt must be one of {LONG_PROMPT_POLICIES}, got {policy!r}")
        reasons: list[str | None] = []
        for index, prompt in enumerate(prompts):
            suffix = len(suffixes[index]) if suffixes is not None else 0
            if len(prompt) + suffix <= limit:
                reasons.append(None)
            elif policy == "error":
                raise ValueError(
                    f"prompt {index} has {len(prompt) + suffix} tokens, more than the {limit} the "
                    "settings allow: raise max_length, or choose on_long_prompt: skip | truncate-left")
            elif policy == "skip":
                reasons.append("prompt_too_long")
            else:  # keep the suffix and the end of the prompt, drop tokens from its start
                prompts[index] = prompt[len(prompt) + suffix - limit:] if limit > suffix else []
                reasons.append(None if limit > suffix else "prompt_too_long")
        return reasons

    def generate(
        self,
        tasks: Sequence[Task],
        sampling: Mapping[str, Any] | None = None,
        *,
        seed: int = 0,
        on_long_prompt: str = "error",
        progress: bool = False,
        trace: Any = None,
    ) -> list[Answer]:
        """Answer every task with the sampler of the checkpoint's kind.

        ``sampling``: the sampler's settings (``flexmdm_generate`` / ``mdm_generate`` keywords,
        e.g. ``steps``, ``confidence``, ``gen_length``); ``seed`` and each task's stream id fix its
        randomness. ``on_long_prompt``: a prompt longer than :meth:`prompt_limit` raises
        (``error``), is answered with nothing and marked (``skip``), or loses tokens from its
        start (``truncate-left``). Returns one :class:`Answer` per task, in order.
        """
        tasks = list(tasks)
        settings = dict(sampling or {})
        prompts, suffixes = self.encode(tasks)
        reasons = self._fit(prompts, suffixes, self.prompt_limit(settings), on_long_prompt)
        kept = [index for index, reason in enumerate(reasons) if reason is None]
        answers = [Answer("", [], 0, 0.0, skipped=reason) for reason in reasons]
        if kept:
            stream_ids = [index if tasks[index].stream_id is None else tasks[index].stream_id
                          for index in kept]
            generated = self.generate_ids(
                [prompts[i] for i in kept], settings,
                suffixes=None if suffixes is None else [suffixes[i] for i in kept],
                stream_ids=stream_ids, seed=seed, progress=progress, trace=trace,
            )  # fmt: skip
            for index, answer in zip(kept, generated):
                answers[index] = answer
        return answers

    def generate_ids(
        self, prompts: list[list[int]], sampling: Mapping[str, Any] | None = None, *,
        suffixes: list[list[int]] | None = None, stream_ids: list[int] | None = None,
        seed: int = 0, progress: bool = False, trace: Any = None,
    ) -> list[Answer]:
        """Answers of prompts already encoded (token ids; infilling: with ``suffixes``) by the
        sampler of the checkpoint's kind, cut at their first stop id. ``stream_ids``: the random
        stream of each prompt (default its index)."""
        settings = dict(sampling or {})
        stream_ids = list(range(len(prompts))) if stream_ids is None else stream_ids
        started = time.perf_counter()
        with torch.no_grad():
            if self.kind == "mdm":
                sampler = MDM_SAMPLERS[settings.pop("sampler", "llada")]
                result = sampler(
                    self.model, prompts, seed=seed, row_ids=stream_ids, progress=progress,
                    trace=trace, **settings,
                )  # fmt: skip
                passes = [int(result.steps)] * len(prompts)
                truncated = [False] * len(prompts)
            else:
                result = flexmdm_generate(
                    self.model, prompts, suffixes=suffixes, seed=seed, row_ids=stream_ids,
                    progress=progress, trace=trace, **settings,
                )  # fmt: skip
                passes = [int(steps) for steps in result.steps]
                truncated = [bool(flag) for flag in result.truncated]
        share = (time.perf_counter() - started) / max(1, len(prompts))
        answers = []
        for index, ids in enumerate(result.sequences):
            ids = cut_at_stop(ids, self.special_ids.stop_ids)
            answers.append(Answer(self.decode(ids), ids, passes[index], share, truncated[index]))
        return answers

    # -- identity ---------------------------------------------------------------------------------

    def checkpoint_dir(self, model_id: str | Path, revision: str | None = None) -> Path:
        """The local directory of ``model_id`` (a Hub id resolves to its snapshot)."""
        return resolve_checkpoint_dir(model_id, revision)
