"""Schedules: values, derivatives, inverses, rate factors, dtypes and spec parsing."""

import math

import pytest
import torch

from retrofit.schedules import (
    RATE_FACTOR_MIN_DENOMINATOR,
    CosineSchedule,
    GeometricSchedule,
    LinearSchedule,
    PolySchedule,
    Schedule,
    SinSchedule,
    get_schedule,
)

SPECS = [
    "linear",
    "geometric(10, 0.01)",
    "geometric(5, 0.5)",
    "sin",
    "cosine",
    "poly(2)",
    "poly(0.5)",
]


@pytest.fixture(params=SPECS)
def schedule(request) -> Schedule:
    return get_schedule(request.param)


def interior_times(count: int = 199) -> torch.Tensor:
    return torch.linspace(0.005, 0.995, count, dtype=torch.float64)


def test_closed_form_values():
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(LinearSchedule().at(t), t)
    torch.testing.assert_close(SinSchedule().at(t), torch.sin(math.pi * t / 2))
    torch.testing.assert_close(CosineSchedule().at(t), 1 - torch.cos(math.pi * t / 2))
    torch.testing.assert_close(PolySchedule(3).at(t), t**3)
    expected = torch.exp(-(10.0 ** (1 - t)) * 0.01**t)
    torch.testing.assert_close(GeometricSchedule(10, 0.01).at(t), expected)
    # geometric(10, 0.01) at t = 0.5: h = sqrt(10 * 0.01), a = exp(-h), a' = a h ln(1000).
    h = math.sqrt(0.1)
    geometric = GeometricSchedule(10, 0.01)
    assert geometric.at(torch.tensor(0.5, dtype=torch.float64)).item() == pytest.approx(
        math.exp(-h), rel=1e-12
    )
    assert geometric.derivative(torch.tensor(0.5, dtype=torch.float64)).item() == pytest.approx(
        math.exp(-h) * h * math.log(1000), rel=1e-12
    )


def test_derivative_matches_finite_differences(schedule):
    t = interior_times()
    step = 1e-6
    numeric = (schedule.at(t + step) - schedule.at(t - step)) / (2 * step)
    torch.testing.assert_close(schedule.derivative(t), numeric, rtol=1e-6, atol=1e-7)


def test_monotone_and_endpoints(schedule):
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    values = schedule.at(t)
    assert bool((values[1:] > values[:-1]).all())
    assert bool((values >= 0).all()) and bool((values <= 1).all())
    if isinstance(schedule, GeometricSchedule):
        assert values[0].item() == pytest.approx(math.exp(-schedule.s0))
        assert values[-1].item() == pytest.approx(math.exp(-schedule.s1))
    else:
        assert values[0].item() == 0.0
        assert values[-1].item() == pytest.approx(1.0, abs=1e-15)


def test_inverse_round_trip(schedule):
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    torch.testing.assert_close(schedule.inverse(schedule.at(t)), t, rtol=0, atol=1e-9)
    t32 = t.float()
    torch.testing.assert_close(schedule.inverse(schedule.at(t32)), t32, rtol=0, atol=2e-3)
    # Values outside the range clamp to the ends of [0, 1].
    outside = schedule.inverse(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert outside.tolist() == [0.0, 1.0]


def test_rate_factor_interior(schedule):
    t = interior_times()
    t = t[1 - schedule.at(t) > RATE_FACTOR_MIN_DENOMINATOR]  # outside the clamped region
    assert t.numel() > 150
    expected = schedule.derivative(t) / (1 - schedule.at(t))
    torch.testing.assert_close(schedule.rate_factor(t), expected, rtol=1e-9, atol=0)


def test_rate_factor_closed_forms():
    t = torch.tensor([0.0, 0.5, 0.9, 0.99], dtype=torch.float64)
    torch.testing.assert_close(LinearSchedule().rate_factor(t), 1 / (1 - t))
    # poly(2): 2 t / (1 - t^2)
    torch.testing.assert_close(PolySchedule(2).rate_factor(t), 2 * t / (1 - t**2))
    # cosine: (pi/2) sin(pi t/2) / cos(pi t/2) = (pi/2) tan(pi t/2)
    torch.testing.assert_close(
        CosineSchedule().rate_factor(t), math.pi / 2 * torch.tan(math.pi * t / 2)
    )


def test_rate_factor_finite_near_one(schedule):
    t = torch.tensor([1.0 - 1e-7, 1.0 - 2.0**-24, 1.0], dtype=torch.float32)
    rate = schedule.rate_factor(t)
    assert bool(torch.isfinite(rate).all()) and bool((rate >= 0).all())
    cap = schedule.derivative(t.double()).max().item() / RATE_FACTOR_MIN_DENOMINATOR
    assert rate.max().item() <= cap * (1 + 1e-5)
    # The clamp is exactly the documented one.
    expected = schedule.derivative(t) / schedule.one_minus_at(t).clamp_min(
        RATE_FACTOR_MIN_DENOMINATOR
    )
    torch.testing.assert_close(rate, expected)
    assert LinearSchedule().rate_factor(torch.tensor(1.0)).item() == pytest.approx(1e4)
    assert LinearSchedule().rate_factor(
        torch.tensor(1.0), min_denominator=1e-2
    ).item() == pytest.approx(100)


def test_one_minus_at_is_accurate_near_one():
    # Computed naively in float32, 1 - sin(pi t / 2) at t = 1 - 1e-3 loses most digits.
    t = torch.tensor(1 - 1e-3, dtype=torch.float32)
    exact = 1 - math.sin(math.pi * float(t.double()) / 2)
    assert SinSchedule().one_minus_at(t).item() == pytest.approx(exact, rel=1e-5)
    exact_poly = 1 - float(t.double()) ** 3
    assert PolySchedule(3).one_minus_at(t).item() == pytest.approx(exact_poly, rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_dtypes_preserved(schedule, dtype):
    t = torch.linspace(0.01, 0.99, 50).to(dtype)
    reference = schedule.at(t.double())
    for method in ("at", "derivative", "rate_factor"):
        out = getattr(schedule, method)(t)
        assert out.dtype == dtype
        assert out.shape == t.shape
    tolerance = {torch.bfloat16: 1e-2, torch.float16: 2e-3}.get(dtype, 1e-6)
    torch.testing.assert_close(schedule.at(t).double(), reference, rtol=tolerance, atol=tolerance)
    assert schedule.inverse(schedule.at(t)).dtype == dtype


def test_bf16_autocast(schedule):
    t = torch.linspace(0.01, 0.99, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out32 = schedule.rate_factor(t)
        out16 = schedule.rate_factor(t.bfloat16())
    assert out32.dtype == torch.float32 and out16.dtype == torch.bfloat16
    torch.testing.assert_close(out32, schedule.rate_factor(t))
    torch.testing.assert_close(
        out16.float(), schedule.rate_factor(t.bfloat16().float()), rtol=1e-2, atol=1e-2
    )


def test_accepts_python_floats_and_multidim():
    schedule = get_schedule("sin")
    assert schedule.at(0.5).item() == pytest.approx(math.sin(math.pi / 4))
    grid = torch.rand(3, 4, 5, generator=torch.Generator().manual_seed(0))
    assert schedule.at(grid).shape == (3, 4, 5)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("linear", LinearSchedule()),
        ("  Linear() ", LinearSchedule()),
        ("sin", SinSchedule()),
        ("cosine", CosineSchedule()),
        ("geometric(10, 0.01)", GeometricSchedule(10, 0.01)),
        ("geometric(s0=10, s1=1e-2)", GeometricSchedule(10, 0.01)),
        ("geometric(10, s1=0.01)", GeometricSchedule(10, 0.01)),
        ("poly(2)", PolySchedule(2)),
        ("poly(p=0.5)", PolySchedule(0.5)),
        ({"name": "poly", "p": 2}, PolySchedule(2)),
        ({"name": "geometric", "s0": 10, "s1": "0.01"}, GeometricSchedule(10, 0.01)),
        ({"name": "linear"}, LinearSchedule()),
    ],
)
def test_parsing(spec, expected):
    assert get_schedule(spec) == expected


def test_spec_round_trip(schedule):
    assert get_schedule(schedule.spec) == schedule
    assert get_schedule(schedule.to_dict()) == schedule
    assert get_schedule(schedule) is schedule


def test_canonical_specs():
    assert get_schedule("geometric(10.0, 0.010)").spec == "geometric(10, 0.01)"
    assert get_schedule("poly(2.0)").spec == "poly(2)"
    assert get_schedule("poly(0.5)").spec == "poly(0.5)"
    assert get_schedule("LINEAR").spec == "linear"
    assert str(get_schedule("cosine")) == "cosine"
    assert get_schedule("sin") != get_schedule("cosine")


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            "foo",
            (
                r"unknown schedule 'foo'.*known schedules: "
                r"cosine, geometric\(s0, s1\), linear, poly\(p\), sin"
            ),
        ),
        ({"name": "exp"}, "unknown schedule 'exp'"),
        ("geometric(10)", r"geometric\(s0, s1\) takes 2 parameter\(s\), got 1"),
        ("geometric(10, 0.01, 3)", "takes 2 parameter"),
        ("poly()", r"poly\(p\) takes 1 parameter"),
        ("linear(2)", "linear takes 0 parameter"),
        ("poly(two)", "parameter p of poly must be a number, got 'two'"),
        ("geometric(10, x)", "parameter s1 of geometric must be a number"),
        ("geometric(0.01, 10)", "needs s0 > s1"),
        ("geometric(1, 1)", "needs s0 > s1"),
        ("geometric(1, 0)", "s1 must be finite and > 0"),
        ("geometric(-1, -2)", "must be finite and > 0"),
        ("poly(0)", "p > 0"),
        ("poly(-2)", "p > 0"),
        ("poly(inf)", "finite p > 0"),
        ("poly(q=2)", "has no parameter 'q'"),
        ("poly(2", "cannot parse schedule"),
        ({"p": 2}, "has no 'name'"),
        ({"name": "poly"}, r"missing \['p'\]"),
        ({"name": "poly", "p": 2, "q": 1}, r"unexpected \['q'\]"),
        ({"name": "poly", "p": [2]}, "must be a number"),
        ({"name": "poly", "p": True}, "must be a number"),
    ],
)
def test_parse_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        get_schedule(spec)


def test_wrong_type():
    with pytest.raises(TypeError, match="spec string, a dict or a Schedule"):
        get_schedule(3)
    with pytest.raises(ValueError, match="min_denominator"):
        LinearSchedule().rate_factor(torch.tensor(0.5), min_denominator=0)
