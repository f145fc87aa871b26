"""Order statistics for benchmark samples: percentiles and medians.

Pure functions on lists of floats; a percentile uses the nearest-rank method, so
p99 of 1000 samples is the 990th smallest (no interpolation between samples).
"""

from __future__ import annotations

import math
import statistics


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank ``p``-th percentile (0 < p <= 100) of a non-empty sample list."""
    if not samples:
        raise ValueError("percentile of no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    return statistics.median(values)


def lateness_summary(samples: list[float]) -> dict[str, float]:
    """p50/p99/worst of lateness samples in seconds, returned in milliseconds."""
    return {
        "p50": percentile(samples, 50) * 1e3,
        "p99": percentile(samples, 99) * 1e3,
        "worst": max(samples) * 1e3,
        "samples": len(samples),
    }
