"""Statistics for benchmark results: pass@k, confidence intervals, paired tests. Standard library only."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k for one task (Chen et al. 2021): 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), which avoids huge binomials.
    """
    if not 0 <= num_correct <= num_samples:
        raise ValueError(f"need 0 <= num_correct <= num_samples, got c={num_correct}, n={num_samples}")
    if not 1 <= k <= num_samples:
        raise ValueError(f"pass@{k} needs 1 <= k <= n samples per task, got n={num_samples}")
    if num_samples - num_correct < k:
        return 1.0
    product = 1.0
    for i in range(num_samples - num_correct + 1, num_samples + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def mean_pass_at_k(samples_per_task: Sequence[int], correct_per_task: Sequence[int], k: int) -> float:
    """pass@k averaged over tasks (each task has its own n and c)."""
    if len(samples_per_task) != len(correct_per_task):
        raise ValueError("samples_per_task and correct_per_task must have one entry per task")
    if not samples_per_task:
        raise ValueError("no tasks to average over")
    scores = [pass_at_k(n, c, k) for n, c in zip(samples_per_task, correct_per_task)]
    return sum(scores) / len(scores)


def wilson_interval(successes: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when total == 0."""
    if total <= 0:
        return (0.0, 1.0)
    z = _normal_quantile(0.5 + confidence / 2)
    phat = successes / total
    denominator = 1 + z * z / total
    centre = (phat + z * z / (2 * total)) / denominator
    half = z * math.sqrt(phat * (1 - phat) / total + z * z / (4 * total * total)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_interval(values: Sequence[float], confidence: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (seeded, reproducible)."""
    if not values:
        return (0.0, 0.0)
    rng = random.Random(seed)
    size = len(values)
    means = sorted(sum(values[rng.randrange(size)] for _ in range(size)) / size
                   for _ in range(resamples))
    low = means[math.floor((1 - confidence) / 2 * (resamples - 1))]
    high = means[math.ceil((1 + confidence) / 2 * (resamples - 1))]
    return (low, high)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: binomial test of the discordant pairs against p = 1/2.

    only_a: pairs that A got right and B wrong; only_b: the reverse.
    """
    discordant = only_a + only_b
    if discordant == 0:
        return 1.0
    smaller = min(only_a, only_b)
    tail = sum(math.comb(discordant, i) for i in range(smaller + 1)) / 2**discordant
    return min(1.0, 2 * tail)


def _normal_quantile(probability: float) -> float:
    """Inverse standard normal CDF (Acklam's rational approximation, |error| < 1.2e-9)."""
    if not 0 < probability < 1:
        raise ValueError(f"probability must be in (0, 1), got {probability}")
    a = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02,
         1.383577518672690e02, -3.066479806614716e01, 2.506628277459239e00)
    b = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02,
         6.680131188771972e01, -1.328068155288572e01)
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00,
         -2.549732539343734e00, 4.374664141464968e00, 2.938163982698783e00)
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
    low = 0.02425
    if probability < low:
        q = math.sqrt(-2 * math.log(probability))
        return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    if probability > 1 - low:
        return -_normal_quantile(1 - probability)
    q = probability - 0.5
    r = q * q
    return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / \
        (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)


__all__ = ["bootstrap_interval", "mcnemar_exact", "mean_pass_at_k", "pass_at_k", "wilson_interval"]
