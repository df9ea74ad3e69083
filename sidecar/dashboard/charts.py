"""The dashboard's charts: inline SVG drawn by matplotlib on the server.

matplotlib is already the report's charting library (``toolkit/charts.py``); drawing on the server
means no JavaScript charting bundle, nothing fetched from a CDN, and charts whose text (titles,
axis labels, legend) is real SVG text that a browser test can read. Each chart is a pure function
of the rollups, so the page layer caches it per index version.
"""

from __future__ import annotations

import io
from typing import Any, Sequence

from certus.sidecar.dashboard.index import Overview
from certus.sidecar.toolkit.charts import BLUE, GREEN, GREY, ORANGE, RED, figure

OUTCOME_COLOURS = {"pass": GREEN, "warning": ORANGE, "fail": RED, "skipped": GREY}
PALETTE = (BLUE, ORANGE, GREEN, RED, GREY, "#8e44ad", "#16a085")


def _axes(w: float = 7.0, h: float = 2.8) -> tuple[Any, Any]:
    """The report's figure (same colours and grid), without the top and right spines."""
    fig, ax = figure(w, h)
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def _svg(fig: Any, chart_id: str) -> str:
    import matplotlib

    fig.tight_layout()
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": chart_id}):  # text stays text
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    start = text.find("<svg")
    return text[start:].replace("<svg ", f'<svg role="img" aria-label="{chart_id}" data-chart="{chart_id}" ', 1)


def _x(labels: Sequence[str], ax: Any) -> list[int]:
    xs = list(range(len(labels)))
    step = max(1, len(labels) // 10)
    ax.set_xticks(xs[::step])
    ax.set_xticklabels(labels[::step], rotation=30, ha="right", fontsize=8)
    return xs


def outcomes_chart(ov: Overview) -> str:
    fig, ax = _axes()
    xs = _x(ov.labels, ax)
    bottom = [0] * len(xs)
    for outcome in ("pass", "warning", "fail", "skipped"):
        counts = ov.outcome_counts.get(outcome)
        if not counts:
            continue
        ax.bar(xs, counts, bottom=bottom, color=OUTCOME_COLOURS[outcome], label=outcome, width=0.8)
        bottom = [b + c for b, c in zip(bottom, counts)]
    ax.set_ylabel("decisions")
    ax.set_ylim(0, max(bottom, default=0) * 1.3 + 1)  # room for the legend above the bars
    ax.set_title(f"Decisions per {ov.unit} by outcome", fontsize=10)
    ax.legend(fontsize=8, ncols=4, loc="upper left")
    return _svg(fig, "outcomes")


def pass_rate_chart(ov: Overview) -> str:
    fig, ax = _axes()
    xs = _x(ov.labels, ax)
    ys = [None if v is None else 100 * v for v in ov.pass_rate]
    ax.plot(xs, [float("nan") if y is None else y for y in ys], color=BLUE, marker="o", ms=3, label="pass rate")
    ax.set_ylim(0, 101)
    ax.set_ylabel("% of scored")
    ax.set_title(f"Pass rate per {ov.unit} (pass + warning over scored)", fontsize=10)
    return _svg(fig, "pass-rate")


def metric_chart(ov: Overview, index: int) -> str:
    s = ov.metrics[index]
    fig, ax = _axes(7.0, 2.4)
    xs = _x(ov.labels, ax)

    def arr(v: Sequence[float | None]) -> list[float]:
        return [float("nan") if x is None else x for x in v]

    ax.fill_between(xs, arr(s.p10), arr(s.p90), color=BLUE, alpha=0.15, label="p10-p90")
    ax.plot(xs, arr(s.p50), color=BLUE, ls="--", lw=1, label="median")
    ax.plot(xs, arr(s.mean), color=BLUE, marker="o", ms=3, lw=1.6, label="mean")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{s.name} per {ov.unit}", fontsize=10)
    ax.legend(fontsize=8, ncols=3, loc="lower left")
    return _svg(fig, f"metric-{s.name}")


def violations_chart(ov: Overview) -> str:
    fig, ax = _axes(7.0, 2.4)
    xs = _x(ov.labels, ax)
    for i, (gtype, counts) in enumerate(sorted(ov.violation_series.items())):
        ax.plot(xs, counts, color=PALETTE[i % len(PALETTE)], marker="o", ms=3, label=gtype)
    ax.set_ylabel("violations")
    ax.set_title(f"Guardrail violations per {ov.unit} by type", fontsize=10)
    if ov.violation_series:
        ax.legend(fontsize=8, ncols=4, loc="upper left")
    return _svg(fig, "violations")
