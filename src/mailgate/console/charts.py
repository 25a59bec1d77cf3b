"""Server-rendered SVG line charts for the dashboard: no JavaScript library, no build step.

Owns: turning a few named series of counts over time into one self-contained `<svg>` element
(axes, a scale rounded to a readable maximum, one polyline per series, a circle with a tooltip
for every non-zero point, a legend).
Must not: count anything (traffic.py) or know HTTP.

Values and labels are numbers and fixed strings of ours, but everything is escaped anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup

COLOURS = {"accepted": "#2b7bb9", "refused": "#c0392b", "delivered": "#27ae60", "deferred": "#e69a17",
           "bounced": "#8e44ad"}
WIDTH, HEIGHT = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 44, 10, 12, 38


def nice_maximum(value: int) -> int:
    """The smallest of 1, 2, 5 x 10^n at or above `value` (at least 1): a readable top of scale."""
    scale = 1
    while True:
        for step in (1, 2, 5):
            if step * scale >= value:
                return step * scale
        scale *= 10


def line_chart(title: str, labels: Sequence[str], series: dict[str, Sequence[int]], *, chart_id: str) -> Markup:
    """`labels[i]` names point i of every series; about six labels are written under the axis."""
    count = max(len(labels), 1)
    top = nice_maximum(max((max(values, default=0) for values in series.values()), default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(index: int) -> float:
        return LEFT + (plot_w * index / (count - 1) if count > 1 else plot_w / 2)

    def y(value: int) -> float:
        return TOP + plot_h - plot_h * value / top

    parts = [f'<svg id="{escape(chart_id)}" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
             f"<title>{escape(title)}</title>"]
    for fraction in (0, 0.5, 1):
        value = top * fraction
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(value):.1f}" y2="{y(value):.1f}"/>')
        parts.append(f'<text class="axis" x="{LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{value:g}</text>')
    every = max(1, count // 6)
    for index, label in enumerate(labels):
        if index % every == 0 or index == count - 1:
            anchor = "end" if index == count - 1 else ("start" if index == 0 else "middle")  # inside the frame
            parts.append(f'<text class="axis" x="{x(index):.1f}" y="{HEIGHT - BOTTOM + 16}" '
                         f'text-anchor="{anchor}">{escape(label)}</text>')
    for name, values in series.items():
        colour = COLOURS.get(name, "#555")
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
        parts.append(f'<polyline class="series" data-series="{escape(name)}" fill="none" stroke="{colour}" '
                     f'stroke-width="2" points="{points}"/>')
        for index, value in enumerate(values):
            if value:
                parts.append(f'<circle class="point" data-series="{escape(name)}" data-value="{value}" '
                             f'cx="{x(index):.1f}" cy="{y(value):.1f}" r="3" fill="{colour}">'
                             f"<title>{escape(name)} {value} at {escape(labels[index])}</title></circle>")
    for position, name in enumerate(series):
        left = LEFT + position * 110
        parts.append(f'<rect x="{left}" y="{HEIGHT - 14}" width="10" height="10" fill="{COLOURS.get(name, "#555")}"/>'
                     f'<text class="legend" x="{left + 14}" y="{HEIGHT - 5}">{escape(name)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
