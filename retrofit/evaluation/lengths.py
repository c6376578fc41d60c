"""Length fidelity: generated vs reference length distributions (Wasserstein-1, histogram PNG)."""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from pathlib import Path


def wasserstein_1(first: Sequence[float], second: Sequence[float]) -> float:
    """Wasserstein-1 (earth mover's) distance between two 1-D empirical distributions.

    Equals the integral of |F_first(x) - F_second(x)| dx over the merged support; same value as
    `scipy.stats.wasserstein_distance(first, second)`.
    """
    if not first or not second:
        raise ValueError("wasserstein_1 needs two non-empty samples")
    left, right = sorted(float(v) for v in first), sorted(float(v) for v in second)
    points = sorted(set(left) | set(right))
    distance = 0.0
    i = j = 0
    for current, following in itertools.pairwise(points):
        while i < len(left) and left[i] <= current:
            i += 1
        while j < len(right) and right[j] <= current:
            j += 1
        distance += abs(i / len(left) - j / len(right)) * (following - current)
    return distance


def length_summary(lengths: Sequence[float]) -> dict[str, float]:
    """count, mean, std, min, median, max of a list of lengths (empty -> count 0 only)."""
    if not lengths:
        return {"count": 0}
    values = [float(v) for v in lengths]
    return {
        "count": len(values),
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values),
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
    }


def length_report(generated: Sequence[float], reference: Sequence[float]) -> dict[str, object]:
    """Summary of both distributions, W1 between them and the mean signed difference."""
    report: dict[str, object] = {
        "generated": length_summary(generated),
        "reference": length_summary(reference),
    }
    if generated and reference:
        report["wasserstein_1"] = wasserstein_1(generated, reference)
        report["mean_difference"] = statistics.fmean(generated) - statistics.fmean(reference)
    return report


def plot_length_histograms(generated: Sequence[float], reference: Sequence[float],
                           path: str | Path, *, title: str = "answer lengths",
                           unit: str = "tokens", bins: int = 40) -> Path:
    """Overlayed histograms of generated and reference lengths, saved as PNG (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # no pyplot: no global figure state

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=(6.4, 4.0), dpi=100)
    axes = figure.add_subplot()
    values = [float(v) for v in list(generated) + list(reference)] or [0.0]
    low, high = min(values), max(values)
    edges = [low + (high - low + 1e-9) * i / bins for i in range(bins + 1)]
    if reference:
        axes.hist(reference, bins=edges, alpha=0.5, label=f"reference (n={len(reference)})")
    if generated:
        axes.hist(generated, bins=edges, alpha=0.5, label=f"generated (n={len(generated)})")
    if generated and reference:
        title = f"{title}  (W1 = {wasserstein_1(generated, reference):.2f} {unit})"
    axes.set_title(title)
    axes.set_xlabel(f"length ({unit})")
    axes.set_ylabel("count")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path


__all__ = ["length_report", "length_summary", "plot_length_histograms", "wasserstein_1"]
