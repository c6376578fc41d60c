"""``generate_fn`` for a checkpoint: the inference pipeline with a benchmark spec's sampler settings."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

from retrofit.adapter.checkpoint import CONFIG_FILE
from retrofit.evaluation.benchmarks import EvalTask, Generation
from retrofit.evaluation.results import sample_stream_id
from retrofit.evaluation.specs import EvalSpec, check_generation

__all__ = ["ModelGenerator", "request_for"]


def request_for(task: EvalTask) -> Any:
    """The inference request (:class:`retrofit.pipeline.Task`) of a benchmark task: its prompt (the
    instruction when infilling), prefix and suffix, and the random stream of its sample."""
    from retrofit.pipeline import Task

    return Task(prompt=task.prompt, prefix=task.prefix if task.kind == "infill" else None,
                suffix=task.suffix, stream_id=sample_stream_id(task.task_id, task.sample_index),
                answer_prefix=task.answer_prefix)


class ModelGenerator:
    """`generate_fn` for a checkpoint: its :class:`retrofit.pipeline.Pipeline` with a spec's sampler
    settings for the checkpoint's kind (FlexMDM insert + unmask, or the MDM baseline).

    Prompts are encoded exactly as in training (the checkpoint's recorded prompt layout; a spec's
    explicit ``prompt.chat_template`` / ``prompt.infill_markers`` override it). Each sample draws
    from the stream of its (task id, sample index). Lengths are answer tokens. A prompt too long
    for the settings is handled by ``on_long_prompt`` (default the spec's
    ``generation.on_long_prompt``, ``skip``): skipped and counted, never an abort that repeats.
    """

    def __init__(self, model: str, spec: EvalSpec, *, revision: str | None = None,
                 tokenizer: str | None = None, device: str | None = None, dtype: str = "auto",
                 overrides: dict[str, Any] | None = None, seed: int = 0,
                 on_long_prompt: str | None = None) -> None:
        from retrofit.pipeline import Pipeline, default_device_and_dtype

        self.model_id, self.revision = model, revision
        self.device, self.dtype = default_device_and_dtype(device, dtype)
        self.pipeline = Pipeline.from_pretrained(
            model, revision=revision, tokenizer=tokenizer, device=self.device, dtype=self.dtype,
            layout_overrides={"chat_template": spec.prompt.get("chat_template"),
                              "infill_markers": spec.prompt.get("infill_markers")},
        )  # fmt: skip
        self.model, self.kind = self.pipeline.model, self.pipeline.kind
        self.spec = spec
        self.settings = spec.generation_settings(self.kind)
        self.settings.update(overrides or {})
        if overrides:  # --gen KEY=VALUE: the same validation as the spec's own settings
            check_generation(self.kind, self.settings, where=f"{spec.name}: generation.{self.kind} + --gen")
        self.seed = seed
        self.on_long_prompt = on_long_prompt or spec.on_long_prompt

    def identity(self) -> dict[str, Any]:
        """What was evaluated: checkpoint id or absolute local path, revision, kind, base model,
        config digest, dtype.

        The same on every rank of a sharded run (it is compared with the run.json rank 0 wrote), so
        per-process fields such as the device are not part of it: see :meth:`runtime`.
        """
        from retrofit.checkpoint_io import is_hub_id

        directory = self.pipeline.checkpoint_dir(self.model_id, self.revision)
        config_file = directory / CONFIG_FILE
        digest = hashlib.sha256(config_file.read_bytes()).hexdigest() if config_file.is_file() else None
        # A local checkpoint is recorded by absolute path, so that results read later from another
        # working directory (e.g. a Hub model card) still name the right checkpoint.
        model = str(self.model_id) if is_hub_id(self.model_id) else str(directory.resolve())
        return {"model": model, "revision": self.revision, "kind": self.kind,
                "base_model": getattr(self.model.config, "base_model", None),
                "base_revision": getattr(self.model.config, "base_revision", None),
                "retrofit_config_sha256": digest, "dtype": self.dtype}

    def runtime(self) -> dict[str, Any]:
        """Per-process facts (the device of this rank): reported in summary.json, never compared."""
        return {"device": str(self.device)}

    def count_tokens(self, text: str) -> int:
        """Length of `text` in this checkpoint's tokens (no special tokens added)."""
        return self.pipeline.count_tokens(text)

    def __call__(self, tasks: list[EvalTask]) -> list[Generation]:
        """One answer per task; each sample draws from the stream of its (task_id, sample_index)."""
        instruction = self.spec.instruction(self.kind)
        requests = [request_for(dataclasses.replace(task, prompt=instruction)
                                if task.kind == "infill" and task.prompt is None else task)
                    for task in tasks]
        answers = self.pipeline.generate(requests, self.settings, seed=self.seed,
                                         on_long_prompt=self.on_long_prompt)
        outputs = []
        for answer in answers:
            extra = {} if self.kind == "mdm" else {"steps": answer.forward_passes,
                                                   "truncated": answer.truncated}
            if answer.skipped:
                extra["skipped"] = answer.skipped
            outputs.append(Generation(answer.text, num_tokens=answer.num_tokens, extra=extra,
                                      forward_passes=answer.forward_passes, seconds=answer.seconds))
        return outputs

