"""The PNG chart: per group, horizontal bars of each contender's ratio to the baseline.

One row per workload metric, one bar per contender, log scale centred on 1 (the
baseline); bars right of the line are better. weaveloop is drawn in a strong colour,
the others muted, so the picture reads in seconds. Uses matplotlib's Agg backend.
"""

from __future__ import annotations

from pathlib import Path

from . import units
from .results import GroupResults

_COLOURS = {
    "weaveloop": "#d9480f",
    "asyncio": "#a5b4c4",
    "uvloop": "#5c7cfa",
    "rloop": "#74b816",
    "stdlib": "#a5b4c4",
    "janus": "#ae3ec9",
    "culsans": "#1098ad",
    "aiologic": "#5c7cfa",
}


def _others(res: GroupResults) -> list[str]:
    """Non-baseline contenders, weaveloop first so its bar tops each row."""
    others = [c for c in res.contenders if c != res.baseline]
    return sorted(others, key=lambda c: c != "weaveloop")


def _rows(res: GroupResults) -> list[tuple[str, list[tuple[str, float | None]]]]:
    others = _others(res)
    rows = []
    for w in res.workloads:
        for m in w.metrics:
            label = w.name if len(w.metrics) == 1 else f"{w.name} · {units.metric_label(m)}"
            bars = [(c, res.ratio(w, c, m)) for c in others if res.cell(w.name, c) is not None]
            rows.append((label, bars))
    return rows


def _ticks(lo: float, hi: float) -> list[float]:
    return [t for t in (0.03, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128) if lo <= t <= hi]


def draw(path: Path, results: list[GroupResults], runs: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(res, _rows(res)) for res in results if res.baseline and len(res.contenders) > 1]
    if not panels:
        return
    heights = [0.5 * len(rows) + 1.6 for _, rows in panels]
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(10, sum(heights)),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, (res, rows) in zip(axes[:, 0], panels, strict=True):
        others = _others(res)
        slot = 0.8 / max(1, len(others))
        values = [r for _, bars in rows for _, r in bars if r]
        lo, hi = min([1.0, *values]) / 1.8, max([1.0, *values]) * 2.2
        for y, (_, bars) in enumerate(rows):
            if not bars:
                ax.text(1.0, y, f"  only {res.baseline} ran", va="center", fontsize=7)
            for c, r in bars:
                offset = (others.index(c) - (len(others) - 1) / 2) * slot
                colour = _COLOURS.get(c, "#868e96")
                if r is None:
                    ax.text(1.0, y + offset, " n/a", va="center", fontsize=7, color=colour)
                    continue
                strong = c == "weaveloop"
                ax.barh(y + offset, r - 1, left=1, height=slot * 0.9, color=colour, label=c,
                        alpha=1.0 if strong else 0.8)  # fmt: skip
                ax.text(r * (1.03 if r >= 1 else 0.97), y + offset, units.ratio(r),
                        va="center", ha="left" if r >= 1 else "right", fontsize=7,
                        fontweight="bold" if strong else "normal")  # fmt: skip
        ax.axvline(1.0, color="black", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        ticks = _ticks(lo, hi)
        ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
        ax.minorticks_off()
        ax.set_yticks(range(len(rows)), [label for label, _ in rows])
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(
            f"{res.group.title}: ratio to {res.baseline}, right of the line = better "
            f"(median of {runs} run{'s' if runs != 1 else ''})",
            fontsize=10,
        )
        handles, labels = ax.get_legend_handles_labels()
        legend = dict(zip(labels, handles, strict=True))
        if legend:
            ax.legend(legend.values(), legend.keys(), loc="upper center", fontsize=8,
                      bbox_to_anchor=(0.5, -0.6 / (len(rows) + 3)), ncol=len(legend),
                      frameon=False)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
