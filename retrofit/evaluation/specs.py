"""Benchmark specs (`eval/*.yaml`): data source + prompt + generation settings + extraction + metric.

A spec is declarative, the way lm-evaluation-harness keeps tasks: adding a benchmark variant is adding
a YAML file. Fields:

    name: gsm8k                      # result identity
    task: gsm8k | humaneval_infill | lengths | jsonl
    data: {...}                      # where tasks come from (task-specific keys, see below)
    prompt: {...}                    # how a task becomes model input
    generation:                      # sampler keyword arguments per checkpoint kind
      batch_size: 8
      on_long_prompt: skip     # | truncate-left | error: a prompt that leaves no room to answer
      flexmdm: {steps: 256, confidence: prob_diff, ...}   # retrofit.sampling.flexmdm_generate
      mdm: {gen_length: 256, block_length: 32, ...}       # retrofit.sampling.mdm_generate
    extraction: {...}                # answer extraction / completion normalisation
    metric: {primary: strict_accuracy, interval: wilson}
    sandbox: {timeout_s: 3.0}        # code benchmarks only

Task-specific data keys: gsm8k: `hub`, `config`, `split`, `file` (the file name to look for when
`--data` is a folder). humaneval_infill: `variant`. lengths: `source` (the task whose data/prompt it
reuses: gsm8k or humaneval_infill, with that task's data keys).

`jsonl` is a benchmark of your own, added without code in retrofit: tasks are the lines of a local
JSONL file and a function of yours decides each verdict (accuracy with a Wilson interval, plus the
length statistics against each task's reference)::

    name: my-task
    task: jsonl
    data:
      file: tasks.jsonl        # relative to the spec file, or --data PATH (a file or its folder)
      fields: {task_id: id}    # record keys, default task_id / prompt / prefix / suffix / reference
    metric:
      check: my_package.checks:is_correct   # importable `module:function(task, completion) -> bool`

A record with a ``prefix`` is an infilling task (``prefix`` + generated middle + ``suffix``), else a
prompt task; ``reference`` is the gold text whose length the generated lengths are compared with.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrofit.yaml_config import from_dict, load_yaml

TASKS = ("gsm8k", "humaneval_infill", "lengths", "jsonl")
JSONL_FIELDS = ("task_id", "prompt", "prefix", "suffix", "reference")
KINDS = ("flexmdm", "mdm")


def builtin_spec_dir() -> Path:
    """The repository's `eval/` folder (specs shipped with retrofit)."""
    return Path(__file__).resolve().parents[2] / "eval"


@dataclass
class EvalSpec:
    """A parsed benchmark spec (see the module docstring for the YAML layout)."""

    name: str
    task: str
    data: dict[str, Any] = field(default_factory=dict)
    prompt: dict[str, Any] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)
    extraction: dict[str, Any] = field(default_factory=dict)
    metric: dict[str, Any] = field(default_factory=dict)
    sandbox: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"spec {self.name!r}: task must be one of {TASKS}, got {self.task!r}")
        if self.task == "lengths" and self.data.get("source") not in ("gsm8k", "humaneval_infill"):
            raise ValueError(f"spec {self.name!r}: a lengths spec needs data.source: gsm8k or "
                             f"humaneval_infill, got {self.data.get('source')!r}")
        if self.task == "jsonl":
            check = self.metric.get("check")
            if not isinstance(check, str) or ":" not in check:
                raise ValueError(f"spec {self.name!r}: a jsonl spec needs metric.check: "
                                 f"'module:function' (called as function(task, completion) -> "
                                 f"bool), got {check!r}")
            fields = self.data.get("fields", {})
            unknown = sorted(set(fields) - set(JSONL_FIELDS)) if isinstance(fields, dict) else None
            if unknown is None or unknown:
                raise ValueError(f"spec {self.name!r}: data.fields maps {list(JSONL_FIELDS)} to "
                                 f"record keys; got {fields!r}")
        if self.generation.get("on_long_prompt", "skip") not in ("skip", "truncate-left", "error"):
            raise ValueError(f"spec {self.name!r}: generation.on_long_prompt must be skip, "
                             f"truncate-left or error, got {self.generation['on_long_prompt']!r}")
        instruction = self.prompt.get("instruction")
        if isinstance(instruction, dict) and not set(instruction) <= set(KINDS):
            raise ValueError(f"spec {self.name!r}: prompt.instruction maps checkpoint kinds {KINDS} to "
                             f"instructions, got keys {sorted(instruction)}")
        for kind in KINDS:
            settings = self.generation.get(kind, {})
            if not isinstance(settings, dict):
                raise ValueError(f"spec {self.name!r}: generation.{kind} must be a mapping of "  # noqa: TRY004
                                 f"sampler arguments, got {settings!r}")
            check_generation(kind, settings, where=f"{self.path or self.name}: generation.{kind}")

    @property
    def source_task(self) -> str:
        """The task that provides data and prompts (a lengths spec borrows another task's)."""
        return self.data["source"] if self.task == "lengths" else self.task

    def generation_settings(self, kind: str) -> dict[str, Any]:
        """Sampler keyword arguments for a checkpoint kind ("flexmdm" or "mdm")."""
        if kind not in KINDS:
            raise ValueError(f"checkpoint kind must be one of {KINDS}, got {kind!r}")
        return copy.deepcopy(self.generation.get(kind, {}))

    def instruction(self, kind: str | None = None) -> str | None:
        """The instruction before an infilling task (``prompt.instruction``): one string for both
        checkpoint kinds, or a mapping ``{flexmdm: ..., mdm: ...}`` (the research code prompted
        its MDM baseline with an instruction and its FlexMDM with none); None without a kind for
        a per-kind mapping."""
        value = self.prompt.get("instruction")
        if isinstance(value, dict):
            return value.get(kind) if kind is not None else None
        return value

    @property
    def on_long_prompt(self) -> str:
        """What to do with a prompt too long for the sampler settings (`generation.on_long_prompt`):
        ``skip`` (default: answered with nothing, counted in the summary), ``truncate-left`` or
        ``error``."""
        return str(self.generation.get("on_long_prompt", "skip"))

    @property
    def batch_size(self) -> int:
        """Prompts per generation batch (`generation.batch_size`, default 8)."""
        return int(self.generation.get("batch_size", 8))

    def to_dict(self) -> dict[str, Any]:
        """The spec as a plain dict (recorded in result files)."""
        return {
            "name": self.name, "task": self.task, "data": self.data, "prompt": self.prompt,
            "generation": self.generation, "extraction": self.extraction, "metric": self.metric,
            "sandbox": self.sandbox, "path": self.path,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], path: str | None = None) -> EvalSpec:
        """Build from parsed YAML through the one strict loader (:mod:`retrofit.yaml_config`):
        unknown keys (with a did-you-mean), wrong types and a missing ``name``/``task`` name the
        key (and, for a file, its line)."""
        spec = from_dict(cls, {k: v for k, v in raw.items() if v is not None or k in ("name", "task")},
                         what=f"benchmark spec {path or raw.get('name')}")
        spec.path = path
        return spec


def check_generation(kind: str, settings: dict[str, Any], *, where: str) -> None:
    """Validate sampler settings once, through the sampler's typed config (an unknown key with a
    did-you-mean, a wrong type or value: one error naming ``where``). The MDM settings may name
    ``sampler: dream`` (Dream's own sampler, checked against its keywords)."""
    import inspect

    from retrofit.sampling import FlexMDMSamplingConfig, MDMSamplingConfig
    from retrofit.sampling.dream import dream_generate

    if kind == "flexmdm":
        FlexMDMSamplingConfig.from_dict(settings, where=where)
        return
    settings = dict(settings)
    sampler = settings.pop("sampler", "llada")
    if sampler == "llada":
        MDMSamplingConfig.from_dict(settings, where=where)
    elif sampler == "dream":
        known = set(inspect.signature(dream_generate).parameters) - {"model", "prompts"}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"{where}: {unknown} are not settings of Dream's sampler; known: {sorted(known)}")
    else:
        raise ValueError(f"{where}.sampler must be 'llada' or 'dream', got {sampler!r}")


def load_spec(spec: str | Path | dict[str, Any] | EvalSpec) -> EvalSpec:
    """Load a spec from a YAML path, a builtin name ("gsm8k", "humaneval-infill-single-line"), a
    dict, or return an EvalSpec unchanged."""
    if isinstance(spec, EvalSpec):
        return spec
    if isinstance(spec, dict):
        return EvalSpec.from_dict(spec)
    path = Path(spec)
    if not path.is_file():
        candidate = builtin_spec_dir() / f"{spec}.yaml"
        if candidate.is_file():
            path = candidate
        else:
            available = sorted(p.stem for p in builtin_spec_dir().glob("*.yaml"))
            raise FileNotFoundError(f"no benchmark spec {spec!r}: not a file, and not one of the "
                                    f"builtin specs {available}")
    return EvalSpec.from_dict(load_yaml(path, what="benchmark spec"), path=str(path))


__all__ = ["JSONL_FIELDS", "KINDS", "TASKS", "EvalSpec", "builtin_spec_dir", "check_generation", "load_spec"]
