"""Monotone schedules on [0, 1] for FlexMDM insertion (alpha) and unmasking (beta).

A schedule ``a(t)`` rises from ``a(0) ~ 0`` (t = 0: empty answer) to ``a(1) ~ 1`` (t = 1: data).
Every schedule offers, elementwise on tensors of any float dtype and device:

- ``at(t)``          a(t)
- ``derivative(t)``  a'(t)
- ``inverse(a)``     the t in [0, 1] with a(t) = a (values outside [a(0), a(1)] clamp to 0 or 1)
- ``rate_factor(t)`` kappa(t) = a'(t) / (1 - a(t)), the FlexMDM loss weight and sampler rate

Precision: the maths runs in float32 (float64 when the input is float64) and the result is cast
back to the input dtype, so bf16 inputs (also under autocast) give bf16 outputs without bf16
rounding inside ``exp``/``log``/``asin``. ``1 - a(t)`` is computed in a cancellation-free closed
form for every schedule, so the rate factor stays accurate as t -> 1.

Rate factor clamp: for every schedule except ``geometric`` (whose ``a(1) = exp(-s1) < 1``),
``1 - a(t) -> 0`` as t -> 1 and kappa(t) diverges like c / (1 - t). ``rate_factor`` divides by
``max(1 - a(t), min_denominator)`` with ``min_denominator = RATE_FACTOR_MIN_DENOMINATOR = 1e-4`` by
default, so kappa <= a'(t) * 1e4. For the linear schedule this only changes t > 1 - 1e-4, i.e. about
one training time in 10^4 (times are drawn from [1e-3, 1)), and caps the loss weight there at 1e4.
Where a'(1) = 0 (``sin``) the clamped value falls back towards 0 inside the clamped region
(t > 0.991 for sin) instead of diverging; ``geometric`` never reaches the clamp. For ``poly(p)``
with p < 1, a'(0) and hence kappa(0) are infinite (training times start at 1e-3).

Schedules are parsed from strings (``"geometric(10, 0.01)"``, ``"poly(2)"``, ``"linear"``), dicts
(``{"name": "poly", "p": 2}``) or passed through, with :func:`get_schedule`.
"""

from __future__ import annotations

import math
import numbers
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

__all__ = [
    "RATE_FACTOR_MIN_DENOMINATOR",
    "CosineSchedule",
    "GeometricSchedule",
    "LinearSchedule",
    "PolySchedule",
    "Schedule",
    "SinSchedule",
    "get_schedule",
    "known_schedules",
]

# Smallest value of 1 - a(t) that rate_factor divides by (see the module docstring).
RATE_FACTOR_MIN_DENOMINATOR = 1e-4


def _format_number(value: float) -> str:
    """Shortest exact text for a parameter: ``10.0 -> "10"``, ``0.01 -> "0.01"``."""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _as_float_tensor(values: Tensor | float) -> tuple[Tensor, torch.dtype]:
    """Return ``(values in the compute dtype, dtype to return)``.

    float64 inputs compute in float64; every other input (bf16, fp16, fp32, integers, Python
    floats) computes in float32. Floating inputs are returned in their own dtype, others in float32.
    """
    tensor = values if isinstance(values, Tensor) else torch.as_tensor(values)
    if tensor.is_complex():
        raise TypeError(f"schedules take real tensors, got dtype {tensor.dtype}")
    output_dtype = tensor.dtype if tensor.is_floating_point() else torch.float32
    compute_dtype = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    return tensor.to(compute_dtype), output_dtype


class Schedule(ABC):
    """A monotone increasing schedule a: [0, 1] -> [0, 1]; see the module docstring.

    Subclasses implement ``_at``, ``_one_minus_at``, ``_derivative`` and ``_inverse`` on float32 /
    float64 tensors; the public methods handle dtypes. All methods are elementwise: the output has
    the input's shape (any shape, e.g. ``(B,)`` or ``(B, L)``).
    """

    name: ClassVar[str]
    parameter_names: ClassVar[tuple[str, ...]] = ()

    # --- implemented by each schedule (compute dtype in, compute dtype out) ---
    @abstractmethod
    def _at(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def _one_minus_at(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def _derivative(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def _inverse(self, a: Tensor) -> Tensor: ...

    # --- public API ---
    def at(self, t: Tensor | float) -> Tensor:
        """a(t), elementwise. ``t``: any shape, values in [0, 1]; returns its shape and dtype."""
        t_compute, output_dtype = _as_float_tensor(t)
        return self._at(t_compute).to(output_dtype)

    def one_minus_at(self, t: Tensor | float) -> Tensor:
        """1 - a(t), elementwise, computed without cancellation near t = 1."""
        t_compute, output_dtype = _as_float_tensor(t)
        return self._one_minus_at(t_compute).to(output_dtype)

    def derivative(self, t: Tensor | float) -> Tensor:
        """a'(t), elementwise. ``t``: any shape; returns the same shape and dtype."""
        t_compute, output_dtype = _as_float_tensor(t)
        return self._derivative(t_compute).to(output_dtype)

    def inverse(self, a: Tensor | float) -> Tensor:
        """The t in [0, 1] with a(t) = a, elementwise.

        Values below a(0) map to 0 and values above a(1) map to 1 (this matters for ``geometric``,
        whose range is [exp(-s0), exp(-s1)]); callers that need "never reached within [0, 1]" must
        compare against ``at(1.0)`` themselves (as :func:`retrofit.interpolant.forward_process`).
        """
        a_compute, output_dtype = _as_float_tensor(a)
        return self._inverse(a_compute).clamp(0.0, 1.0).to(output_dtype)

    def rate_factor(
        self, t: Tensor | float, *, min_denominator: float = RATE_FACTOR_MIN_DENOMINATOR
    ) -> Tensor:
        """kappa(t) = a'(t) / max(1 - a(t), min_denominator), elementwise and always finite.

        ``t``: any shape; returns the same shape and dtype. See the module docstring for the clamp.
        """
        if not min_denominator > 0:
            raise ValueError(f"min_denominator must be > 0, got {min_denominator}")
        t_compute, output_dtype = _as_float_tensor(t)
        denominator = self._one_minus_at(t_compute).clamp_min(min_denominator)
        return (self._derivative(t_compute) / denominator).to(output_dtype)

    @property
    def parameters(self) -> dict[str, float]:
        """The schedule's parameters by name (empty for parameter-free schedules)."""
        return {name: getattr(self, name) for name in self.parameter_names}

    @property
    def spec(self) -> str:
        """Canonical text, parsed back by :func:`get_schedule`, e.g. ``"geometric(10, 0.01)"``."""
        if not self.parameter_names:
            return self.name
        arguments = ", ".join(_format_number(getattr(self, n)) for n in self.parameter_names)
        return f"{self.name}({arguments})"

    def to_dict(self) -> dict[str, Any]:
        """Dict form, e.g. ``{"name": "poly", "p": 2.0}``; parsed back by :func:`get_schedule`."""
        return {"name": self.name, **self.parameters}

    def __str__(self) -> str:
        return self.spec


@dataclass(frozen=True)
class LinearSchedule(Schedule):
    """a(t) = t; kappa(t) = 1 / (1 - t)."""

    name: ClassVar[str] = "linear"

    def _at(self, t: Tensor) -> Tensor:
        return t.clone()

    def _one_minus_at(self, t: Tensor) -> Tensor:
        return 1.0 - t

    def _derivative(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def _inverse(self, a: Tensor) -> Tensor:
        return a.clone()


@dataclass(frozen=True)
class GeometricSchedule(Schedule):
    """a(t) = exp(-s0^(1-t) * s1^t) with s0 > s1 > 0 (the research code trains with s0=10, s1=0.01).

    a(0) = exp(-s0) and a(1) = exp(-s1) < 1: a fraction 1 - exp(-s1) of tokens (~1% for s1 = 0.01)
    is still not inserted at t = 1. With h(t) = s0^(1-t) s1^t: a'(t) = a(t) h(t) ln(s0 / s1).
    """

    s0: float = 10.0
    s1: float = 0.01

    name: ClassVar[str] = "geometric"
    parameter_names: ClassVar[tuple[str, ...]] = ("s0", "s1")

    def __post_init__(self) -> None:
        for parameter in ("s0", "s1"):
            value = getattr(self, parameter)
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                raise TypeError(f"geometric: {parameter} must be a number, got {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"geometric: {parameter} must be finite and > 0, got {value}")
            object.__setattr__(self, parameter, float(value))
        if not self.s0 > self.s1:
            raise ValueError(
                f"geometric(s0, s1) needs s0 > s1 so that a(t) increases, got s0={self.s0}, "
                f"s1={self.s1}; e.g. geometric(10, 0.01)"
            )

    def _exponent(self, t: Tensor) -> Tensor:
        # h(t) = s0^(1-t) s1^t = s0 * exp(t ln(s1/s0)), decreasing from s0 to s1.
        return self.s0 * torch.exp(t * math.log(self.s1 / self.s0))

    def _at(self, t: Tensor) -> Tensor:
        return torch.exp(-self._exponent(t))

    def _one_minus_at(self, t: Tensor) -> Tensor:
        return -torch.expm1(-self._exponent(t))

    def _derivative(self, t: Tensor) -> Tensor:
        exponent = self._exponent(t)
        return torch.exp(-exponent) * exponent * math.log(self.s0 / self.s1)

    def _inverse(self, a: Tensor) -> Tensor:
        # -ln a = s0 (s1/s0)^t => t = (ln(-ln a) - ln s0) / ln(s1/s0); a = 0 -> -inf, a = 1 -> +inf
        neg_log = -torch.log(a.clamp(0.0, 1.0))
        return (torch.log(neg_log) - math.log(self.s0)) / math.log(self.s1 / self.s0)


@dataclass(frozen=True)
class SinSchedule(Schedule):
    """a(t) = sin(pi t / 2); 1 - a(t) = 2 sin^2(pi (1 - t) / 4)."""

    name: ClassVar[str] = "sin"

    def _at(self, t: Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * t)

    def _one_minus_at(self, t: Tensor) -> Tensor:
        return 2.0 * torch.sin(0.25 * math.pi * (1.0 - t)) ** 2

    def _derivative(self, t: Tensor) -> Tensor:
        # cos(pi t / 2) written as sin(pi (1 - t) / 2): exactly 0 (not -4e-8) at t = 1 in float32.
        return 0.5 * math.pi * torch.sin(0.5 * math.pi * (1.0 - t))

    def _inverse(self, a: Tensor) -> Tensor:
        return torch.asin(a.clamp(0.0, 1.0)) * (2.0 / math.pi)


@dataclass(frozen=True)
class CosineSchedule(Schedule):
    """a(t) = 1 - cos(pi t / 2) = 2 sin^2(pi t / 4); 1 - a(t) = sin(pi (1 - t) / 2)."""

    name: ClassVar[str] = "cosine"

    def _at(self, t: Tensor) -> Tensor:
        # 2 sin^2(pi t / 4) avoids the cancellation in 1 - cos(.) for small t.
        return 2.0 * torch.sin(0.25 * math.pi * t) ** 2

    def _one_minus_at(self, t: Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * (1.0 - t))

    def _derivative(self, t: Tensor) -> Tensor:
        return 0.5 * math.pi * torch.sin(0.5 * math.pi * t)

    def _inverse(self, a: Tensor) -> Tensor:
        return torch.asin(torch.sqrt(0.5 * a.clamp(0.0, 1.0))) * (4.0 / math.pi)


@dataclass(frozen=True)
class PolySchedule(Schedule):
    """a(t) = t^p with p > 0 (p = 1 is linear); a'(t) = p t^(p-1) (infinite at t = 0 when p < 1)."""

    p: float = 2.0

    name: ClassVar[str] = "poly"
    parameter_names: ClassVar[tuple[str, ...]] = ("p",)

    def __post_init__(self) -> None:
        value = self.p
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise TypeError(f"poly: p must be a number, got {value!r}")
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"poly(p) needs a finite p > 0, got p={value}; e.g. poly(2)")
        object.__setattr__(self, "p", float(value))

    def _at(self, t: Tensor) -> Tensor:
        return torch.pow(t, self.p)

    def _one_minus_at(self, t: Tensor) -> Tensor:
        # 1 - t^p = -expm1(p ln t): accurate near t = 1 where t^p rounds to 1.
        return -torch.expm1(self.p * torch.log(t))

    def _derivative(self, t: Tensor) -> Tensor:
        return self.p * torch.pow(t, self.p - 1.0)

    def _inverse(self, a: Tensor) -> Tensor:
        return torch.pow(a.clamp(0.0, 1.0), 1.0 / self.p)


_SCHEDULES: dict[str, type[Schedule]] = {
    cls.name: cls
    for cls in (LinearSchedule, GeometricSchedule, SinSchedule, CosineSchedule, PolySchedule)
}


def known_schedules() -> list[str]:
    """Names with their parameters, e.g. ``["cosine", "geometric(s0, s1)", ...]``."""
    return [
        f"{name}({', '.join(cls.parameter_names)})" if cls.parameter_names else name
        for name, cls in sorted(_SCHEDULES.items())
    ]


_SPEC_PATTERN = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*$", re.DOTALL)


def _parse_number(text: str, schedule_name: str, parameter: str, spec: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(
            f"schedule {spec!r}: parameter {parameter} of {schedule_name} must be a number, "
            f"got {text!r}"
        ) from None


def _lookup(name: str, spec: object) -> type[Schedule]:
    cls = _SCHEDULES.get(name.strip().lower())
    if cls is None:
        raise ValueError(
            f"unknown schedule {name!r} in {spec!r}; known schedules: "
            f"{', '.join(known_schedules())}"
        )
    return cls


def _from_string(spec: str) -> Schedule:
    match = _SPEC_PATTERN.match(spec)
    if match is None:
        raise ValueError(
            f"cannot parse schedule {spec!r}: expected 'name' or 'name(arg, ...)', e.g. "
            f"'linear', 'poly(2)', 'geometric(10, 0.01)'; known schedules: "
            f"{', '.join(known_schedules())}"
        )
    cls = _lookup(match.group(1), spec)
    argument_text = (match.group(2) or "").strip()
    arguments = [part.strip() for part in argument_text.split(",")] if argument_text else []
    expected = cls.parameter_names
    positional: list[str] = []
    named: dict[str, str] = {}
    for argument in arguments:
        if "=" in argument:
            key, _, value = argument.partition("=")
            key = key.strip()
            if key not in expected:
                raise ValueError(
                    f"schedule {spec!r}: {cls.name} has no parameter {key!r}; its parameters are "
                    f"({', '.join(expected)})"
                )
            named[key] = value.strip()
        else:
            if named:
                raise ValueError(f"schedule {spec!r}: positional argument after a named one")
            positional.append(argument)
    if len(positional) + len(named) != len(expected) or any(
        name in named for name in expected[: len(positional)]
    ):
        signature = f"{cls.name}({', '.join(expected)})" if expected else cls.name
        raise ValueError(
            f"schedule {spec!r}: {signature} takes {len(expected)} parameter(s), got "
            f"{len(arguments)}"
        )
    values = dict(zip(expected, positional))
    values.update(named)
    parsed = {key: _parse_number(values[key], cls.name, key, spec) for key in expected}
    return cls(**parsed)


def _from_dict(spec: dict) -> Schedule:
    if "name" not in spec:
        raise ValueError(
            f"schedule dict {spec!r} has no 'name'; e.g. {{'name': 'poly', 'p': 2}}; known "
            f"schedules: {', '.join(known_schedules())}"
        )
    name = spec["name"]
    if not isinstance(name, str):
        raise TypeError(f"schedule dict {spec!r}: 'name' must be a string, got {name!r}")
    cls = _lookup(name, spec)
    parameters = {key: value for key, value in spec.items() if key != "name"}
    expected = cls.parameter_names
    unexpected = sorted(set(parameters) - set(expected))
    missing = [key for key in expected if key not in parameters]
    if unexpected or missing:
        raise ValueError(
            f"schedule dict {spec!r}: {cls.name} takes parameters ({', '.join(expected)}); "
            f"missing {missing}, unexpected {unexpected}"
        )
    parsed = {key: _coerce_number(parameters[key], cls.name, key, spec) for key in expected}
    return cls(**parsed)


def _coerce_number(value: object, schedule_name: str, parameter: str, spec: object) -> float:
    """A dict parameter as a float: numbers and numeric strings pass, anything else (bools,
    lists, None, non-numeric text) is a ValueError naming the parameter."""
    number: float | None = None
    if not isinstance(value, bool):
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            number = None
    if number is None:
        raise ValueError(
            f"schedule {spec!r}: parameter {parameter} of {schedule_name} must be a number, "
            f"got {value!r}"
        )
    return number


def get_schedule(spec: str | dict | Schedule) -> Schedule:
    """Build a schedule from ``"geometric(10, 0.01)"``, ``"poly(p=2)"``, ``"linear"``,
    ``{"name": "poly", "p": 2}`` or an existing :class:`Schedule` (returned unchanged).

    Names are case-insensitive. Raises ValueError for unknown names (listing the known ones),
    wrong parameter counts, non-numeric parameters and out-of-range parameters
    (geometric needs s0 > s1 > 0, poly needs p > 0); TypeError for other input types.
    """
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, str):
        return _from_string(spec)
    if isinstance(spec, dict):
        return _from_dict(spec)
    raise TypeError(
        f"get_schedule takes a spec string, a dict or a Schedule, got {type(spec).__name__}"
    )
