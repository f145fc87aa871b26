"""Human-readable numbers: SI-scaled rates, auto-scaled durations, ratios.

Latency metrics are stored in milliseconds and shown in the unit that fits.
"""

from __future__ import annotations

from collections.abc import Iterable

from .registry import Metric


def rate(value: float) -> str:
    """1234567 -> '1.23M'; three significant digits."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def duration_ms(value: float) -> str:
    """A duration given in ms: 0.0421 -> '42.1us', 11.2 -> '11.2ms', 1500 -> '1.50s'."""
    if abs(value) >= 1000:
        return f"{value / 1000:.3g}s"
    if abs(value) >= 1:
        return f"{value:.3g}ms"
    return f"{value * 1000:.3g}us"


def value(metric: Metric, v: float) -> str:
    return rate(v) if metric.higher_is_better else duration_ms(v)


def ratio(r: float) -> str:
    return f"{r:.2f}x"


def metric_label(metric: Metric) -> str:
    """'calls/s' for a throughput, 'p99 latency' for a latency."""
    return metric.label or metric.name


def format_metrics(metrics: Iterable[Metric], values: dict[str, float]) -> str:
    """One line for a run: '1.35M calls/s' or '4.1k calls/s, p99 11.2ms'."""
    parts = []
    for m in metrics:
        v = values[m.name]
        parts.append(f"{rate(v)} {m.unit}" if m.higher_is_better else f"{m.name} {duration_ms(v)}")
    return ", ".join(parts)
