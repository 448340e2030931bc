"""The demo's bar charts (``demo/run_demo.py``): no text drawn over other text or over the bars."""

from __future__ import annotations

import importlib.util
from itertools import combinations
from pathlib import Path

import pytest
from matplotlib.transforms import Bbox

DEMO = Path(__file__).resolve().parents[2] / "demo" / "run_demo.py"


@pytest.fixture(scope="module")
def run_demo():
    spec = importlib.util.spec_from_file_location("run_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: the demo's two charts: its distillation rows (no seeds) and its few-shot rows (95% CIs)
CHARTS = {
    "distillation": (
        [
            "CE only (CE 1)",
            "KD (CE 1 + KD 1, T 4)",
            "CLKD (CE 1, batchmean)",
            "TRG (CE 1 + KD 1, γ 0)",
        ],
        [72.1, 73.5, 74.1, 76.3],
        None,
        "student test top-1 (%)",
    ),
    "fewshot": (
        ["maml", "gp-maml"],
        [67.77, 78.58],
        [1.02, 1.10],
        "5-way 1-shot test accuracy (%), 95% CI",
    ),
}


def _tick_labels(axis) -> list:
    """The tick labels drawn: those of ticks inside the axis's view limits."""
    lo, hi = sorted(axis.get_view_interval())
    return [
        label
        for tick, label in zip(axis.get_ticklocs(), axis.get_ticklabels(), strict=True)
        if lo <= tick <= hi
    ]


@pytest.mark.parametrize("chart", list(CHARTS))
def test_bar_chart_text_does_not_overlap(run_demo, chart):
    names, values, errors, xlabel = CHARTS[chart]
    fig = run_demo.bar_chart(names, values, errors, xlabel)
    try:
        renderer = fig.canvas.get_renderer()
        fig.draw(renderer)
        (ax,) = fig.axes
        texts = [
            t
            for t in [*_tick_labels(ax.xaxis), *_tick_labels(ax.yaxis), *ax.texts]
            + [ax.xaxis.label, ax.yaxis.label]
            if t.get_visible() and t.get_text()
        ]
        boxes = {t.get_text(): t.get_window_extent(renderer) for t in texts}
        assert len(boxes) == len(texts)
        for (a, box_a), (b, box_b) in combinations(boxes.items(), 2):
            assert not box_a.overlaps(box_b), f"{a!r} is drawn over {b!r}"
        figure = fig.bbox
        for name, box in boxes.items():
            assert figure.x0 <= box.x0 and box.x1 <= figure.x1, f"{name!r} is cut off"
            assert figure.y0 <= box.y0 and box.y1 <= figure.y1, f"{name!r} is cut off"
        marks = [p.get_window_extent(renderer) for p in ax.patches]
        for line in ax.lines:  # error-bar caps: one marker per bar
            half = line.get_markersize() * fig.dpi / 72 / 2
            for x, y in ax.transData.transform(line.get_xydata()):
                marks.append(Bbox.from_extents(x - half, y - half, x + half, y + half))
        for collection in ax.collections:  # error-bar lines
            for segment in collection.get_segments():
                points = ax.transData.transform(segment)
                marks.append(Bbox.from_extents(*points.min(0), *points.max(0)))
        for value in ax.texts:
            box = value.get_window_extent(renderer)
            for mark in marks:
                assert not box.overlaps(mark), f"{value.get_text()!r} is drawn over a bar"
        assert [t.get_text() for t in _tick_labels(ax.yaxis)] == names  # one row per name
    finally:
        run_demo.plt.close(fig)
