"""Typed sampler settings, validated once: :class:`FlexMDMSamplingConfig` and :class:`MDMSamplingConfig`.

A config holds what a user chooses about *how* to sample (steps, confidence, temperature, window,
lengths, batching); what belongs to the checkpoint (mask / pad / EOS ids, the schedules it was
trained with) or to one call (the seed, the random-stream ids, the device, a progress bar, a trace
callback) stays an argument of the sampler.

Both configs are dataclasses whose ``__post_init__`` checks every value's range, so an instance is
valid by construction. :meth:`from_dict` builds one from plain data (an eval spec's
``generation.flexmdm`` / ``generation.mdm`` mapping, keyword arguments) strictly: an unknown key is
an error with a did-you-mean, a value of the wrong type is a one-line error naming the key (the
project's one strict loader, :func:`retrofit.yaml_config.from_dict`)::

    FlexMDMSamplingConfig.from_dict({"steps": 256, "confidense": "top_prob"}, where="generation.flexmdm")
    # ConfigError: generation.flexmdm.confidense: unknown key. did you mean 'confidence'? Valid keys: ...
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from retrofit.schedules import Schedule
from retrofit.yaml_config import ConfigError
from retrofit.yaml_config import from_dict as _strict_from_dict

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "CONFIDENCE_NAMES",
    "INSERTION_DRAWS",
    "REMASKING_NAMES",
    "ConfigError",
    "FlexMDMSamplingConfig",
    "MDMSamplingConfig",
    "expose_config_keywords",
    "resolve_config",
]

CONFIDENCE_NAMES = ("prob_diff", "top_prob", "entropy", "position")
REMASKING_NAMES = ("low_confidence", "random")
INSERTION_DRAWS = ("binomial", "poisson")

ConfigType = TypeVar("ConfigType", "FlexMDMSamplingConfig", "MDMSamplingConfig")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise a one-line error (with a did-you-mean) when ``value`` is not one of ``choices``."""
    if value in choices:
        return
    close = difflib.get_close_matches(str(value), choices, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown {name} {value!r}; choose one of {choices}{hint}")


def _check_batching(batch_size: int | None) -> None:
    if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")


class _SamplingConfig:
    """Shared constructors of the two configs."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str | None = None) -> Self:
        """Build a config from plain data, strictly (unknown key or wrong type: ConfigError).

        where: how the error names the mapping, e.g. ``"eval/gsm8k.yaml: generation.flexmdm"``
        (default: the class name).
        """
        if isinstance(data, cls):
            return data
        data = dict(data)
        forbid = data.get("forbid_token_ids")
        if forbid is not None and not isinstance(forbid, (list, tuple, str, Mapping)) and isinstance(
            forbid, Iterable
        ):
            data["forbid_token_ids"] = list(forbid)  # a set or a range of ids: order is irrelevant
        return _strict_from_dict(cls, data, prefix=where or cls.__name__)

    def replace(self, **changes: Any) -> Self:
        """A copy with some fields changed, validated the same way as :meth:`from_dict`."""
        return resolve_config(type(self), self, changes, where=type(self).__name__)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (recorded next to results). Schedules given as objects
        appear as their spec strings."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {key: value.spec if isinstance(value, Schedule) else value
                for key, value in values.items()}


@dataclass(frozen=True)
class FlexMDMSamplingConfig(_SamplingConfig):
    """Settings of :func:`retrofit.sampling.flexmdm_generate` (see its module for the method).

    steps: Euler steps of dt = 1 / steps (then a fill pass at t = 1 fills every remaining mask).
    confidence: which masks to unmask first: ``prob_diff`` | ``top_prob`` | ``entropy`` | ``position``.
    temperature, top_p: token choice; ``temperature == 0`` is greedy.
    window_alpha, max_window: sliding window over the first masks (None = no window; ``max_window``
        alone caps the window without the alpha factor).
    max_length: bound on prompt + answer (+ suffix); None = the model config's.
    stop_threshold: early stop once a row holds no mask and expects fewer insertions than this.
    forbid_token_ids: tokens never emitted (None = mask and pad); the mask id is always added.
    insertion_schedule, unmasking_schedule: None = the model's (its config's) schedules.
    batch_size: prompts per forward batch (None = all); ``sort_by_length`` groups similar
        lengths (outputs do not change).
    fixed_buffer: pad every forward to ``max_length`` (the research sampler's cost; benchmarks).
    insertion_draw: how a step's insertions are drawn from the expected gaps: ``binomial`` (exact
        as the arrival probability goes to 1; see :mod:`retrofit.sampling.flexmdm`) or
        ``poisson`` (the paper's ``Poisson(ghat * p)`` per slot).

    Fast modes (all off by default: the exact sampler; see ``docs/sampling.md`` for measurements):

    unmask_threshold: also commit every eligible mask (the first ``max_window`` masks, all masks
        without a window) whose top-1 probability is at least this, on top of the scheduled k.
    jump_insertions: adaptive step size: when no row of the batch holds a mask, time jumps ahead
        to the furthest step at which every row expects at most this many insertions (arrival
        probability computed exactly for the jump).
    prefix_cache: compute the protected prefix's keys/values once (or every
        ``prefix_cache_refresh`` forward passes) and reuse them while the answer grows:
        approximate (the prefix does not see the answer's or the time's changes in between).
    """

    steps: int = 256
    confidence: str = "prob_diff"
    temperature: float = 0.0
    top_p: float = 1.0
    window_alpha: float | None = None
    max_window: int | None = None
    max_length: int | None = None
    stop_threshold: float = 0.05
    forbid_token_ids: list[int] | None = None
    insertion_schedule: str | dict | Schedule | None = None
    unmasking_schedule: str | dict | Schedule | None = None
    batch_size: int | None = None
    sort_by_length: bool = False
    fixed_buffer: bool = False
    insertion_draw: str = "binomial"
    unmask_threshold: float | None = None
    jump_insertions: float | None = None
    prefix_cache: bool = False
    prefix_cache_refresh: int | None = None

    def __post_init__(self) -> None:
        _check_steps(self.steps)
        _choice("confidence", self.confidence, CONFIDENCE_NAMES)
        _choice("insertion_draw", self.insertion_draw, INSERTION_DRAWS)
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.window_alpha is not None and self.window_alpha <= 0:
            raise ValueError(f"window_alpha must be > 0 or None, got {self.window_alpha}")
        if self.max_window is not None and self.max_window < 1:
            raise ValueError(f"max_window must be >= 1 or None, got {self.max_window}")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length must be >= 1 or None, got {self.max_length}")
        if self.stop_threshold < 0:
            raise ValueError(f"stop_threshold must be >= 0, got {self.stop_threshold}")
        _check_batching(self.batch_size)
        if self.unmask_threshold is not None and not 0.0 < self.unmask_threshold <= 1.0:
            raise ValueError(f"unmask_threshold must be in (0, 1] or None, got {self.unmask_threshold}")
        if self.jump_insertions is not None and not self.jump_insertions > 0:
            raise ValueError(f"jump_insertions must be > 0 or None, got {self.jump_insertions}")
        if self.prefix_cache_refresh is not None and (
            self.prefix_cache_refresh < 1 or not self.prefix_cache
        ):
            raise ValueError(f"prefix_cache_refresh must be >= 1 with prefix_cache: true, got "
                             f"{self.prefix_cache_refresh}")


@dataclass(frozen=True)
class MDMSamplingConfig(_SamplingConfig):
    """Settings of :func:`retrofit.sampling.mdm_generate` (LLaDA's semi-autoregressive sampler).

    gen_length: masks after each prompt; block_length: semi-autoregressive block (None = one block).
    steps: total steps, split evenly across blocks.
    temperature: Gumbel-max temperature (0 = greedy); cfg_scale: classifier-free guidance (0 = off).
    remasking: ``low_confidence`` | ``random``.
    forbid_token_ids: tokens never emitted (the mask id always; EOS is a normal MDM output).
    batch_size, sort_by_length: as for the FlexMDM sampler.
    """

    gen_length: int = 256
    block_length: int | None = None
    steps: int = 256
    temperature: float = 0.0
    cfg_scale: float = 0.0
    remasking: str = "low_confidence"
    forbid_token_ids: list[int] | None = None
    batch_size: int | None = None
    sort_by_length: bool = False

    def __post_init__(self) -> None:
        _check_steps(self.steps)
        block_length = self.gen_length if self.block_length is None else self.block_length
        if self.gen_length < 1 or block_length < 1 or self.gen_length % block_length:
            raise ValueError(
                f"gen_length ({self.gen_length}) must be a positive multiple of block_length "
                f"({block_length})"
            )
        num_blocks = self.gen_length // block_length
        if self.steps % num_blocks:
            raise ValueError(
                f"steps ({self.steps}) must be divisible by the number of blocks ({num_blocks} = "
                f"gen_length / block_length) so that each block gets the same number of steps"
            )
        _choice("remasking", self.remasking, REMASKING_NAMES)
        if self.temperature < 0 or self.cfg_scale < 0:
            raise ValueError(
                f"temperature and cfg_scale must be >= 0, got {self.temperature}, {self.cfg_scale}"
            )
        _check_batching(self.batch_size)

    @property
    def num_blocks(self) -> int:
        """Semi-autoregressive blocks: gen_length / block_length."""
        return self.gen_length // (self.block_length or self.gen_length)


def resolve_config(
    cls: type[ConfigType], config: ConfigType | Mapping[str, Any] | None,
    settings: Mapping[str, Any], where: str,
) -> ConfigType:
    """The config of one sampler call: ``config`` (an instance or a mapping, default all defaults)
    with the keyword ``settings`` laid over it, validated once (unknown key: ConfigError)."""
    if config is None:
        base: dict[str, Any] = {}
    elif isinstance(config, cls):
        if not settings:
            return config
        # Field values as they are (to_dict would write schedule objects as strings).
        base = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    elif isinstance(config, Mapping):
        base = dict(config)
    else:
        raise ConfigError(f"{where}: config must be a {cls.__name__} or a mapping, "
                          f"got {type(config).__name__}")
    return cls.from_dict({**base, **settings}, where=where)


def expose_config_keywords(config_cls: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator for a sampler taking ``**settings``: its signature lists every field of
    ``config_cls`` as a keyword-only parameter (with the field's default) in their place, so
    ``help()``, editors and callers that inspect the signature (e.g. :mod:`retrofit.lm_eval`) see
    the settings the sampler accepts."""

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(function)
        parameters = [p for p in signature.parameters.values()
                      if p.kind is not inspect.Parameter.VAR_KEYWORD]
        taken = {p.name for p in parameters}
        parameters += [
            inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=field.default,
                              annotation=field.type)
            for field in dataclasses.fields(config_cls) if field.name not in taken
        ]
        function.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        return function

    return decorate
