"""PNG charts with matplotlib's Agg canvas (no pyplot, no display, no global state).

Every function writes one PNG and returns its path. Colours are fixed so reports look the same
from run to run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

BLUE = "#1f5fa8"
RED = "#c0392b"
GREEN = "#2e8b57"
GREY = "#7f8c8d"
ORANGE = "#d68910"


def figure(w: float = 6.4, h: float = 3.6) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(str(path), format="png")
    return path


def roc_png(
    path: Path,
    fpr: np.ndarray,
    tpr: np.ndarray,
    auc_value: float,
    *,
    point: tuple[float, float] | None = None,
    point_label: str = "",
    title: str = "ROC curve",
    extra: Sequence[tuple[str, np.ndarray, np.ndarray, float]] = (),
) -> Path:
    fig, ax = figure(5.2, 4.6)
    ax.plot(fpr, tpr, color=BLUE, lw=2, label=f"AUC {auc_value:.3f}")
    colours = [ORANGE, GREEN, RED, GREY]
    for i, (name, x, y, a) in enumerate(extra):
        ax.plot(x, y, color=colours[i % len(colours)], lw=1.5, label=f"{name} (AUC {a:.3f})")
    ax.plot([0, 1], [0, 1], color=GREY, lw=1, ls="--", label="chance")
    if point is not None:
        ax.plot([point[0]], [point[1]], "o", color=RED, ms=7, label=point_label or "chosen threshold")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate (incorrect answers passed)")
    ax.set_ylabel("true positive rate (correct answers passed)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def histogram_png(
    path: Path,
    series: Mapping[str, Sequence[float]],
    *,
    title: str,
    xlabel: str = "score",
    threshold: float | None = None,
    bins: int = 20,
) -> Path:
    fig, ax = figure()
    edges = np.linspace(0.0, 1.0, bins + 1)
    colours = [BLUE, RED, GREEN, ORANGE, GREY]
    many = len(series) > 2  # overlapping fills get unreadable: outlines instead
    for i, (name, values) in enumerate(series.items()):
        v = np.asarray(values, dtype=np.float64)
        if v.size:
            c = colours[i % len(colours)]
            label = f"{name} (n={v.size})"
            if many:
                ax.hist(v, bins=edges, histtype="step", lw=2, color=c, label=label)
            else:
                ax.hist(v, bins=edges, alpha=0.55, color=c, label=label)
    if threshold is not None:
        ax.axvline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:.2f}")
    ax.set_xlim(0, 1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def timeline_png(
    path: Path,
    labels: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    *,
    title: str,
    ylabel: str,
    counts: Sequence[int] | None = None,
    ylim: tuple[float, float] | None = (0.0, 1.02),
) -> Path:
    """One line per series over ordered buckets (``labels``); optional bars of counts behind."""
    fig, ax = figure(7.0, 3.6)
    x = np.arange(len(labels))
    if counts is not None:
        ax2 = ax.twinx()
        ax2.bar(x, counts, width=0.6, color=GREY, alpha=0.2, label="decisions")
        ax2.set_ylabel("decisions per period", color=GREY)
        ax.set_zorder(ax2.get_zorder() + 1)
        ax.patch.set_visible(False)
    colours = [BLUE, GREEN, ORANGE, RED]
    for i, (name, values) in enumerate(series.items()):
        y = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        ax.plot(x, y, marker="o", ms=3, color=colours[i % len(colours)], label=name)
    step = max(1, len(labels) // 8)
    ax.set_xticks(x[::step])
    ax.set_xticklabels([labels[i] for i in range(0, len(labels), step)], rotation=20, fontsize=7)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower left")
    return _save(fig, path)


def bars_png(path: Path, counts: Mapping[str, int], *, title: str, xlabel: str = "count") -> Path:
    fig, ax = figure(6.4, max(2.2, 0.45 * len(counts) + 1.2))
    names = list(counts)[::-1]
    vals = [counts[n] for n in names]
    ax.barh(names, vals, color=RED if vals else GREY)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if not names:
        ax.text(0.5, 0.5, "no guardrail violations recorded", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return _save(fig, path)
